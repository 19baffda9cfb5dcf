//! Smoke's own code as the client side of the SmokeStack tests: Smoke's `Cryptography.java`,
//! `Messages.java` and `SipHash.java` from the third-party snapshot, compiled with Debian's
//! JDK and `libbcprov-java` against the stand-ins in `tests/smoke-harness/`, driven over a
//! line protocol (see `SmokeHarness.java`). One process per Smoke user.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;

use base64::Engine;

const BCPROV: &str = "/usr/share/java/bcprov.jar";
static CLASSES: Mutex<Option<PathBuf>> = Mutex::new(None);

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// The compiled harness (once per test process, in a fresh temporary directory).
pub fn classes() -> PathBuf {
    let mut g = CLASSES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    assert!(
        Path::new(BCPROV).exists(),
        "{BCPROV} is missing: apt-get install libbcprov-java default-jdk-headless (scripts/test does)"
    );
    let root = std::env::temp_dir().join(format!("echomesh-smoke-harness-{}", std::process::id()));
    let src = root.join("src");
    let out = root.join("classes");
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(src.join("org/purple/smoke")).expect("mkdir");
    std::fs::create_dir_all(&out).expect("mkdir");
    let ours = Path::new(env!("CARGO_MANIFEST_DIR")).join("smoke-harness");
    let theirs = crate::echo::third_party().join("smoke/Smoke/app/src/main/java/org/purple/smoke");
    let mut files = Vec::new();
    for f in ["Cryptography.java", "Messages.java", "SipHash.java"] {
        let to = src.join("org/purple/smoke").join(f);
        std::fs::copy(theirs.join(f), &to)
            .unwrap_or_else(|e| panic!("copying Smoke's {f} from {}: {e}", theirs.display()));
        files.push(to);
    }
    for rel in [
        "android/util/Base64.java",
        "android/net/Uri.java",
        "android/content/res/AssetFileDescriptor.java",
        "org/purple/smoke/Miscellaneous.java",
        "org/purple/smoke/Database.java",
        "org/purple/smoke/Kernel.java",
        "org/purple/smoke/Smoke.java",
        "org/purple/smoke/SmokeHarness.java",
    ] {
        files.push(ours.join(rel));
    }
    let st = Command::new("javac")
        .args(["-nowarn", "-encoding", "UTF-8", "-cp", BCPROV, "-d"])
        .arg(&out)
        .args(&files)
        .status()
        .expect("javac (apt-get install default-jdk-headless)");
    assert!(
        st.success(),
        "compiling Smoke's sources and the harness failed"
    );
    *g = Some(out.clone());
    out
}

/// One Smoke user: a harness process with its own keys.
pub struct SmokeUser {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
    pub id: String,
}

impl SmokeUser {
    /// New keys (RSA encryption key of `rsa_bits`; signature key `ec` (P-384) or `rsa`) and
    /// the ozone address.
    pub fn new(signature: &str, rsa_bits: u32, ozone: &str) -> SmokeUser {
        let cp = format!("{}:{BCPROV}", classes().display());
        let mut child = Command::new("java")
            .args(["-cp", &cp, "org.purple.smoke.SmokeHarness"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("java");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = BufReader::new(child.stdout.take().expect("stdout"));
        let mut u = SmokeUser {
            child,
            stdin,
            stdout,
            id: String::new(),
        };
        u.id = u.ok(&format!("init {signature} {rsa_bits}"))[0].clone();
        u.ok(&format!("ozone {ozone}"));
        u
    }

    /// Run a command; its answer's fields (`Err` with the harness's reason).
    pub fn cmd(&mut self, line: &str) -> Result<Vec<String>, String> {
        writeln!(self.stdin, "{line}").expect("write to the harness");
        self.stdin.flush().expect("flush");
        let mut answer = String::new();
        self.stdout
            .read_line(&mut answer)
            .expect("read from the harness");
        let answer = answer.trim_end();
        match answer.strip_prefix("ok") {
            Some(rest) => Ok(rest.split_whitespace().map(str::to_string).collect()),
            None => Err(answer.to_string()),
        }
    }

    pub fn ok(&mut self, line: &str) -> Vec<String> {
        let first = line.split(' ').next().unwrap_or("").to_string();
        self.cmd(line)
            .unwrap_or_else(|e| panic!("harness command {first}: {e}"))
    }

    /// A frame the harness made (base-64 on the line).
    pub fn frame(&mut self, line: &str) -> Vec<u8> {
        let f = self.ok(line);
        base64::engine::general_purpose::STANDARD
            .decode(&f[0])
            .expect("frame base-64")
    }

    /// `retrieve`: the identity frame and the retrieval frame.
    pub fn retrieve(&mut self) -> (Vec<u8>, Vec<u8>) {
        let f = self.ok("retrieve");
        let d = |s: &str| {
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .expect("b64")
        };
        (d(&f[0]), d(&f[1]))
    }

    pub fn chat_stream(&mut self, with: &str, stream: &[u8]) {
        self.ok(&format!("chat-stream {with} {}", b64(stream)));
    }

    pub fn chat(&mut self, to: &str, text: &str) -> Vec<u8> {
        self.frame(&format!("chat {to} {}", b64(text.as_bytes())))
    }

    /// Open a released message: (text, SHA-512 of the data, base-64).
    pub fn open(&mut self, frame: &[u8]) -> Result<(String, String), String> {
        let f = self.cmd(&format!("open {}", b64(frame)))?;
        let text = base64::engine::general_purpose::STANDARD
            .decode(&f[0])
            .map_err(|e| e.to_string())?;
        Ok((String::from_utf8_lossy(&text).into_owned(), f[1].clone()))
    }

    pub fn accept_epks(&mut self, frame: &[u8]) -> Result<Vec<String>, String> {
        self.cmd(&format!("accept-epks {}", b64(frame)))
    }

    /// A server's `0x03` confirmation of this user's shared SipHash ID.
    pub fn confirm(&mut self, frame: &[u8]) -> Result<Vec<String>, String> {
        self.cmd(&format!("confirm {}", b64(frame)))
    }
}

impl Drop for SmokeUser {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
