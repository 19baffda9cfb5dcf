//! Test harness: real `echomesh-node` processes on 127.0.0.1 with their own data
//! directories, driven through `echomeshctl` and the admin API.
//!
//! Binaries are taken from the cargo target directory next to the test executable (or from
//! `ECHOMESH_BIN_DIR`); `cargo build --bins` must have run first (`.ci/run` does).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context};

pub mod chaos;
pub mod console;
pub mod echo;
pub mod gateway;
pub mod smoke;
pub mod webdriver;
pub use echomesh_proto::admin::RuntimeInfo;

pub fn bin_dir() -> PathBuf {
    if let Ok(d) = std::env::var("ECHOMESH_BIN_DIR") {
        return PathBuf::from(d);
    }
    // target/<profile>/deps/<test-binary>
    let exe = std::env::current_exe().expect("current_exe");
    exe.parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf()
}

pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: run `cargo build --bins` before the tests (or set ECHOMESH_BIN_DIR)",
        p.display()
    );
    p
}

/// Poll `f` every 25 ms until it returns `Some`, or fail after `timeout` with `what`.
pub fn wait_for<T>(timeout: Duration, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

/// A port free for both UDP and TCP on 127.0.0.1 now, for a process that binds it later
/// (restarts on the same port, static neighbor lists written before start, Echo listeners).
///
/// Ports come from below the kernel's ephemeral range (32768 and up on Linux), so an
/// outgoing connection made between this check and the bind cannot take the port, and each
/// test process walks its own stretch of them, so no two callers get the same one.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const FIRST: u32 = 20_000;
    const SPAN: u32 = 12_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(2_654_435_761)) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (FIRST + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        let udp = std::net::UdpSocket::bind(("127.0.0.1", port));
        let tcp = std::net::TcpListener::bind(("127.0.0.1", port));
        if udp.is_ok() && tcp.is_ok() {
            return port;
        }
    }
    panic!("no free port in {FIRST}..{}", FIRST + SPAN)
}

/// A UDP port for a node that binds it later (see [`free_port`]).
pub fn free_udp_port() -> u16 {
    free_port()
}

/// Nodes whose identities and ports are fixed before any starts, so each can be given the
/// others as static `--neighbor HOST:PORT#FINGERPRINT` flags.
pub struct Plan {
    pub root: PathBuf,
    pub names: Vec<String>,
    pub fingerprints: Vec<String>,
    pub ports: Vec<u16>,
}

impl Plan {
    pub fn new(root: &Path, names: &[&str]) -> Plan {
        Plan {
            root: root.to_path_buf(),
            names: names.iter().map(|n| n.to_string()).collect(),
            fingerprints: names
                .iter()
                .map(|n| TestNode::init(&root.join(n)))
                .collect(),
            ports: names.iter().map(|_| free_udp_port()).collect(),
        }
    }

    /// `127.0.0.1:PORT#FINGERPRINT` of node `i`.
    pub fn spec(&self, i: usize) -> String {
        format!("127.0.0.1:{}#{}", self.ports[i], self.fingerprints[i])
    }

    /// `--neighbor` flags for each of `neighbors` (a spec may carry `@half`).
    pub fn neighbor_flags(specs: &[String]) -> Vec<String> {
        specs
            .iter()
            .flat_map(|s| ["--neighbor".to_string(), s.clone()])
            .collect()
    }

    /// Start node `i` with `extra` flags.
    pub fn start(&self, i: usize, extra: &[String]) -> TestNode {
        TestNode::start(&self.root, &self.names[i], self.ports[i], extra)
    }

    /// Start every node with its neighbors from the undirected `edges`.
    pub fn start_mesh(&self, edges: &[(usize, usize)]) -> Vec<TestNode> {
        self.start_mesh_with(edges, &[])
    }

    /// [`Plan::start_mesh`] with `extra` flags for every node.
    pub fn start_mesh_with(&self, edges: &[(usize, usize)], extra: &[String]) -> Vec<TestNode> {
        self.start_mesh_each(edges, |_| extra.to_vec())
    }

    /// [`Plan::start_mesh`] with `extra(i)` flags for node `i`.
    pub fn start_mesh_each(
        &self,
        edges: &[(usize, usize)],
        extra: impl Fn(usize) -> Vec<String>,
    ) -> Vec<TestNode> {
        (0..self.names.len())
            .map(|i| {
                let specs: Vec<String> = edges
                    .iter()
                    .filter_map(|&(x, y)| match (x == i, y == i) {
                        (true, _) => Some(self.spec(y)),
                        (_, true) => Some(self.spec(x)),
                        _ => None,
                    })
                    .collect();
                let mut flags = Plan::neighbor_flags(&specs);
                flags.extend(extra(i));
                self.start(i, &flags)
            })
            .collect()
    }
}

/// Where a node process runs: a network namespace (chaos tests) or this one, and the address
/// it listens on (QUIC and admin API).
#[derive(Debug, Clone)]
pub struct Host {
    pub netns: Option<String>,
    pub ip: std::net::IpAddr,
}

impl Default for Host {
    fn default() -> Self {
        Host {
            netns: None,
            ip: std::net::IpAddr::from([127, 0, 0, 1]),
        }
    }
}

/// The harness's own `ECHOMESH_CHAOS_*` settings are not node configuration (a node refuses
/// unknown `ECHOMESH_*` variables): keep them away from node processes.
fn without_harness_env(mut cmd: Command) -> Command {
    for (k, _) in std::env::vars_os() {
        if k.to_string_lossy().starts_with("ECHOMESH_CHAOS_") {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub struct TestNode {
    pub name: String,
    pub dir: PathBuf,
    child: Option<Child>,
    pub info: RuntimeInfo,
    extra: Vec<String>,
    host: Host,
}

impl TestNode {
    /// Create the data dir and identity without starting; returns the fingerprint.
    pub fn init(dir: &Path) -> String {
        let out = without_harness_env(Command::new(bin("echomesh-node")))
            .args(["--init", "--data-dir"])
            .arg(dir)
            .output()
            .expect("run echomesh-node --init");
        assert!(
            out.status.success(),
            "init failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.lines()
            .find_map(|l| l.strip_prefix("fingerprint").map(|f| f.trim().to_string()))
            .expect("fingerprint line")
    }

    /// Start a node in `root/name` on 127.0.0.1 (`port` 0 = any), with extra flags.
    pub fn start(root: &Path, name: &str, port: u16, extra: &[String]) -> TestNode {
        TestNode::start_on(root, name, &Host::default(), port, extra)
    }

    /// Start a node in `root/name` on `host` (`port` 0 = any), with extra flags.
    pub fn start_on(root: &Path, name: &str, host: &Host, port: u16, extra: &[String]) -> TestNode {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("mkdir");
        let mut n = TestNode {
            name: name.into(),
            dir,
            child: None,
            info: RuntimeInfo {
                pid: 0,
                version: String::new(),
                id: String::new(),
                fingerprint: String::new(),
                quic: SocketAddr::new(host.ip, port),
                admin: SocketAddr::new(host.ip, 0),
            },
            extra: extra.to_vec(),
            host: host.clone(),
        };
        n.spawn(port);
        n
    }

    fn spawn(&mut self, port: u16) {
        let runtime = self.dir.join("runtime.json");
        let _ = std::fs::remove_file(&runtime);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("node.log"))
            .expect("log file");
        let cmd = match &self.host.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(bin("echomesh-node"));
                c
            }
            None => Command::new(bin("echomesh-node")),
        };
        let mut cmd = without_harness_env(cmd);
        let ip = self.host.ip;
        let child = cmd
            .arg("--data-dir")
            .arg(&self.dir)
            .args([
                "--listen",
                &SocketAddr::new(ip, port).to_string(),
                "--admin",
                &SocketAddr::new(ip, 0).to_string(),
                "--cluster",
                "test",
            ])
            .args(&self.extra)
            .env("RUST_LOG", "info,echomesh_node=debug")
            .env_remove("ECHOMESH_CONFIG")
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn echomesh-node");
        let pid = child.id();
        self.child = Some(child);
        let name = self.name.clone();
        let info = wait_for(Duration::from_secs(30), &format!("{name} to start"), || {
            if let Some(c) = self.child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    panic!("{name} exited during start ({st}):\n{}", self.log_tail());
                }
            }
            let text = std::fs::read_to_string(&runtime).ok()?;
            let info: RuntimeInfo = serde_json::from_str(&text).ok()?;
            (info.pid == pid).then_some(info)
        });
        self.info = info;
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("node.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(40)..].join("\n")
    }

    pub fn fingerprint(&self) -> &str {
        &self.info.fingerprint
    }

    /// `127.0.0.1:PORT#FINGERPRINT`, as neighbors and clients name this node.
    pub fn spec(&self) -> String {
        format!("{}#{}", self.info.quic, self.info.fingerprint)
    }

    pub fn ctl_cmd(&self) -> Command {
        let mut c = Command::new(bin("echomeshctl"));
        c.arg("--admin")
            .arg(format!("http://{}", self.info.admin))
            .arg("--token-file")
            .arg(self.dir.join("admin.token"))
            .env("ECHOMESH_KNOWN_NODES", self.dir.join("known_nodes"))
            .stdin(Stdio::null());
        c
    }

    /// Run `echomeshctl` against this node.
    pub fn ctl(&self, args: &[&str]) -> Output {
        self.ctl_cmd().args(args).output().expect("run echomeshctl")
    }

    /// Run `echomeshctl`, require success, return stdout.
    pub fn ctl_ok(&self, args: &[&str]) -> String {
        self.ctl_env_ok(&[], args)
    }

    /// `echomeshctl keys gen --no-passphrase` into `dir/NAME.key`: (file, short ID).
    pub fn gen_key(&self, dir: &Path, name: &str) -> (PathBuf, String) {
        let file = dir.join(format!("{name}.key"));
        let out = self.ctl_ok(&[
            "--json",
            "keys",
            "gen",
            "--out",
            file.to_str().expect("utf-8 path"),
            "--no-passphrase",
        ]);
        let v: serde_json::Value = serde_json::from_str(&out).expect("keys gen JSON");
        (file, v["id"].as_str().expect("id").to_string())
    }

    /// Wait until this node's key directory has a bundle for `id`.
    pub fn wait_known(&self, id: &str) {
        wait_for(Duration::from_secs(30), "bundle in the directory", || {
            let out = self.ctl(&["--json", "keys", "lookup", "--node", &self.spec(), id]);
            out.status.success().then_some(())
        });
    }

    /// Wait until this node's map of the mesh shows `links` links up (announcements arrive
    /// within seconds of a mesh forming; lazy push plans its trees from this map).
    pub fn wait_links_up(&self, links: usize) {
        wait_for(Duration::from_secs(30), "the topology map", || {
            let v: serde_json::Value =
                serde_json::from_str(&self.ctl_ok(&["--json", "topology"])).ok()?;
            let up = v["links"]
                .as_array()?
                .iter()
                .filter(|l| l["state"] == "up")
                .count();
            (up == links).then_some(())
        });
    }

    pub fn neighbors(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.ctl_ok(&["--json", "neighbors"])).expect("neighbors json")
    }

    /// Neighbor states by fingerprint.
    pub fn neighbor_state(&self, fingerprint: &str) -> Option<String> {
        self.neighbors()
            .into_iter()
            .find(|n| n["fingerprint"] == fingerprint)
            .and_then(|n| n["state"].as_str().map(String::from))
    }

    pub fn wait_neighbor_up(&self, other: &TestNode) {
        let fp = other.fingerprint().to_string();
        wait_for(
            Duration::from_secs(20),
            &format!("{} to see {} up", self.name, other.name),
            || (self.neighbor_state(&fp).as_deref() == Some("up")).then_some(()),
        );
    }

    /// Issue an invite here and join it from `other`: both pin each other.
    pub fn link(&self, other: &TestNode) {
        let token = self.ctl_ok(&["invite"]).trim().to_string();
        other.ctl_ok(&["join", &token]);
        self.wait_neighbor_up(other);
        other.wait_neighbor_up(self);
    }

    pub fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.info.admin, path)
            .unwrap_or_else(|e| panic!("GET {path} on {}: {e}", self.name))
    }

    /// Sum of a metric's samples whose line starts with `series` (name plus optional labels).
    pub fn metric(&self, series: &str) -> f64 {
        let (_, body) = self.http_get("/metrics");
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter(|l| {
                l.strip_prefix(series)
                    .is_some_and(|rest| rest.starts_with([' ', '{', ',']))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Start `echomeshctl tail` against this node and wait until it is subscribed.
    pub fn tail(&self, args: &[&str]) -> Tail {
        let mut full = vec!["tail", "--node"];
        let spec = self.spec();
        full.push(&spec);
        full.extend_from_slice(args);
        self.ctl_background(&full, &[], "subscribed")
    }

    /// Start `echomeshctl ARGS` in the background (with extra environment) and wait until its
    /// stderr contains `ready` (e.g. tail's "subscribed", recv's "listening").
    pub fn ctl_background(&self, args: &[&str], env: &[(&str, &str)], ready: &str) -> Tail {
        let mut cmd = self.ctl_cmd();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn echomeshctl");
        let mut stderr = child.stderr.take().expect("stderr");
        let mut seen = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut byte = [0u8; 1];
        while !String::from_utf8_lossy(&seen).contains(ready) {
            assert!(
                Instant::now() < deadline,
                "echomeshctl {args:?} did not get ready"
            );
            match stderr.read(&mut byte) {
                Ok(1) => seen.push(byte[0]),
                _ => panic!(
                    "echomeshctl {args:?} exited before it was ready: {}",
                    String::from_utf8_lossy(&seen)
                ),
            }
        }
        Tail { child, stderr }
    }

    /// Run `echomeshctl` with extra environment; require success, return stdout.
    pub fn ctl_env_ok(&self, env: &[(&str, &str)], args: &[&str]) -> String {
        let mut cmd = self.ctl_cmd();
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().expect("run echomeshctl");
        assert!(
            out.status.success(),
            "echomeshctl {args:?} failed: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Send SIGTERM and wait for the exit status.
    pub fn terminate(&mut self) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(st)) = c.try_wait() {
                return st;
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                panic!("{} did not exit within 30 s of SIGTERM", self.name);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Freeze (SIGSTOP) or thaw (SIGCONT) the process: a neighbor that stalls.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let st = Command::new("kill")
            .args([sig, &pid.to_string()])
            .status()
            .expect("kill");
        assert!(st.success());
    }

    /// Start again with the same data dir and QUIC port.
    pub fn restart(&mut self) {
        self.kill9();
        let port = self.info.quic.port();
        self.spawn(port);
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for TestNode {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("--- log of {} ---\n{}", self.name, self.log_tail());
        }
        self.kill9();
    }
}

pub struct Tail {
    child: Child,
    stderr: std::process::ChildStderr,
}

impl Tail {
    /// Wait for the command to exit (it must have --count or --timeout) and return its stdout
    /// lines.
    pub fn finish(self, timeout: Duration) -> (bool, Vec<String>) {
        let (ok, lines, _) = self.finish_with_stderr(timeout);
        (ok, lines)
    }

    /// Like [`Tail::finish`], also returning what the command wrote to stderr after it was
    /// ready.
    pub fn finish_with_stderr(mut self, timeout: Duration) -> (bool, Vec<String>, String) {
        let deadline = Instant::now() + timeout;
        let mut stdout = self.child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s);
            s
        });
        let status = loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                break st;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                let mut err = String::new();
                let _ = self.stderr.read_to_string(&mut err);
                panic!("background echomeshctl did not finish within {timeout:?}: {err}");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let out = reader.join().unwrap_or_default();
        let mut err = String::new();
        let _ = self.stderr.read_to_string(&mut err);
        (
            status.success(),
            out.lines().map(String::from).collect(),
            err,
        )
    }
}

impl Drop for Tail {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal HTTP/1.0 GET (no client library needed for three endpoints).
pub fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).context("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    let (head, body) = buf
        .split_once("\r\n\r\n")
        .ok_or_else(|| anyhow!("no header end"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or_else(|| anyhow!("bad status line"))?;
    Ok((status, body.to_string()))
}

/// Connect a raw QUIC connection with a chosen ALPN and optional client identity, as an
/// attacker or a misconfigured peer would.
pub async fn raw_connect(
    node: &RuntimeInfo,
    alpn: &[u8],
    identity: Option<&echomesh_client::identity::Identity>,
) -> anyhow::Result<quinn::Connection> {
    let expected: echomesh_client::identity::NodeId = node.fingerprint.parse()?;
    let ep = echomesh_client::transport::client_endpoint("127.0.0.1:0".parse()?)?;
    let (cfg, _) = echomesh_client::transport::dial_config(
        identity,
        Some(expected),
        alpn,
        &echomesh_client::transport::Tuning::default(),
    )?;
    let conn = ep
        .connect_with(cfg, node.quic, echomesh_client::transport::SERVER_NAME)?
        .await?;
    Ok(conn)
}

/// Write one frame on a raw stream and read the one frame that answers it.
pub async fn request<Req: serde::Serialize, Resp: serde::de::DeserializeOwned>(
    send: &mut quinn::SendStream,
    recv: &mut quinn::RecvStream,
    msg: &Req,
) -> anyhow::Result<Resp> {
    send.write_all(&echomesh_proto::wire::encode(msg)?).await?;
    let mut buf = Vec::new();
    echomesh_client::framing::read_frame(recv, 1 << 20, &mut buf)
        .await?
        .ok_or_else(|| anyhow!("stream closed before an answer"))
}

pub fn ensure(cond: bool, msg: &str) -> anyhow::Result<()> {
    if !cond {
        bail!("{msg}");
    }
    Ok(())
}

/// A node shared between async test code and blocking harness calls.
pub type Shared = std::sync::Arc<std::sync::Mutex<TestNode>>;

/// Three nodes a, b, c started with `flags`, each linked to the others (one cluster), and
/// their IDs.
pub fn cluster_of_three(
    root: &Path,
    flags: &[String],
) -> (Vec<Shared>, Vec<echomesh_client::identity::NodeId>) {
    let nodes: Vec<Shared> = ["a", "b", "c"]
        .iter()
        .map(|n| std::sync::Arc::new(std::sync::Mutex::new(TestNode::start(root, n, 0, flags))))
        .collect();
    {
        let (a, b, c) = (
            nodes[0].lock().unwrap(),
            nodes[1].lock().unwrap(),
            nodes[2].lock().unwrap(),
        );
        a.link(&b);
        b.link(&c);
        a.link(&c);
    }
    let ids = nodes
        .iter()
        .map(|n| n.lock().unwrap().fingerprint().parse().unwrap())
        .collect();
    (nodes, ids)
}

/// Run a command that must succeed (a check script, a linter); its output otherwise.
pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("run command");
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A client session to `n`, pinned by its fingerprint.
pub async fn session_to(n: &Shared, ep: &quinn::Endpoint) -> echomesh_client::ClientSession {
    let info = n.lock().unwrap().info.clone();
    echomesh_client::connect(
        ep,
        info.quic,
        Some(info.fingerprint.parse().unwrap()),
        "test",
    )
    .await
    .unwrap()
}
