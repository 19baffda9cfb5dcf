//! A real `echomesh-gateway` process and a real webhook receiver process (the Python example
//! from docs/examples, run as documented) for the gateway tests and the benchmark.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{bin, wait_for};

pub struct TestGateway {
    pub dir: PathBuf,
    pub addr: SocketAddr,
    args: Vec<String>,
    child: Option<Child>,
    pub token: String,
}

impl TestGateway {
    /// Start with `--data-dir dir --listen 127.0.0.1:PORT` and `args`; waits for /healthz
    /// and reads the first API token.
    pub fn start(dir: &Path, args: &[String]) -> TestGateway {
        std::fs::create_dir_all(dir).expect("mkdir");
        let port = crate::echo::free_tcp_port();
        let mut g = TestGateway {
            dir: dir.to_path_buf(),
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
            args: args.to_vec(),
            child: None,
            token: String::new(),
        };
        g.spawn();
        g
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("gateway.log"))
            .expect("log");
        let child = Command::new(bin("echomesh-gateway"))
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["--listen", &self.addr.to_string()])
            .args(&self.args)
            .env("ECHOMESH_LOG", "info,echomesh_gateway=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn echomesh-gateway");
        self.child = Some(child);
        let client = client();
        wait_for(Duration::from_secs(60), "gateway to serve /readyz", || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("gateway exited during start ({st}):\n{}", self.log_tail());
                }
            }
            let r = client
                .get(format!("http://{}/readyz", self.addr))
                .send()
                .ok()?;
            (r.status() == 200).then_some(())
        });
        self.token = std::fs::read_to_string(self.dir.join("api.token"))
            .expect("api.token")
            .trim()
            .to_string();
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("gateway.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(60)..].join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// GET with the admin token; (status, JSON body).
    pub fn get(&self, path: &str) -> (u16, serde_json::Value) {
        let r = client()
            .get(self.url(path))
            .bearer_auth(&self.token)
            .send()
            .expect("GET");
        let s = r.status().as_u16();
        (s, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// POST JSON with a token; (status, content type, JSON body).
    pub fn post_json(
        &self,
        token: &str,
        path: &str,
        body: &str,
    ) -> (u16, String, serde_json::Value) {
        let r = client()
            .post(self.url(path))
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .expect("POST");
        let s = r.status().as_u16();
        let ct = r
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string();
        (s, ct, r.json().unwrap_or(serde_json::Value::Null))
    }

    /// The service identity `name`'s short ID.
    pub fn identity_id(&self, name: &str) -> String {
        let (_, v) = self.get("/v1/identities");
        v.as_array()
            .and_then(|a| a.iter().find(|i| i["name"] == name))
            .and_then(|i| i["id"].as_str())
            .unwrap_or_else(|| panic!("identity {name} not in {v}"))
            .to_string()
    }

    pub fn metric(&self, series: &str) -> f64 {
        let text = client()
            .get(self.url("/metrics"))
            .send()
            .and_then(|r| r.text())
            .unwrap_or_default();
        text.lines()
            .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
            .unwrap_or(0.0)
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }
}

impl Drop for TestGateway {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- gateway log ---\n{}", self.log_tail());
        }
        self.kill9();
    }
}

/// A blocking HTTP client with a bounded timeout.
pub fn client() -> reqwest::blocking::Client {
    reqwest::blocking::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("http client")
}

/// docs/examples/webhook_receiver.py, run as a process.
pub struct Receiver {
    pub port: u16,
    pub dir: PathBuf,
    child: Option<Child>,
    secret: PathBuf,
}

impl Receiver {
    pub fn script() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/examples/webhook_receiver.py")
    }

    /// Start on a free port with `secret` (a file); its database and files live in `dir`.
    pub fn start(dir: &Path, secret: &Path) -> Receiver {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mut r = Receiver {
            port: crate::echo::free_tcp_port(),
            dir: dir.to_path_buf(),
            child: None,
            secret: secret.to_path_buf(),
        };
        r.up();
        r
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/hook", self.port)
    }

    pub fn up(&mut self) {
        let mut child = Command::new("python3")
            .arg(Self::script())
            .args(["--port", &self.port.to_string(), "--secret-file"])
            .arg(&self.secret)
            .arg("--db")
            .arg(self.dir.join("inbox.sqlite"))
            .arg("--files-dir")
            .arg(self.dir.join("files"))
            .arg("--log")
            .arg(self.dir.join("deliveries.jsonl"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("python3 webhook receiver");
        // Ready once it printed its line.
        let mut out = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        let mut line = String::new();
        std::io::BufRead::read_line(&mut out, &mut line).expect("receiver output");
        assert!(line.starts_with("listening"), "receiver said {line:?}");
        self.child = Some(child);
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Every delivery the receiver got (repeats included): message ids.
    pub fn deliveries(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.join("deliveries.jsonl"))
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter_map(|v| v["id"].as_str().map(String::from))
            .collect()
    }

    /// The messages the receiver recorded (once each, by its idempotency rule).
    pub fn recorded(&self) -> Vec<serde_json::Value> {
        let out = Command::new("python3")
            .arg("-c")
            .arg("import sqlite3,sys,json; db=sqlite3.connect(sys.argv[1]); print(json.dumps([json.loads(b) for (b,) in db.execute('SELECT body FROM messages ORDER BY rowid')]))")
            .arg(self.dir.join("inbox.sqlite"))
            .output()
            .expect("python3");
        serde_json::from_slice(&out.stdout).unwrap_or_default()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.down();
    }
}
