//! Echo-protocol peers for the bridge tests: real Spot-On-Lite daemons built from the team's
//! unmodified snapshot (`../shared/third-party/spot-on-lite`, or `ECHOMESH_THIRD_PARTY`),
//! copied to a temporary directory and built once per source version (cached under
//! `~/.cache/echomesh/`), and an Echo client speaking TLS (optionally 1.2 only, as Smoke on
//! Android 14+) or plain TCP that sends and receives frames.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use base64::Engine as _;
use bytes::Bytes;
use echomesh_proto::bridge::frame::{control_frame, EOM};
use echomesh_proto::bridge::{FilterInput, Splitter};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;

/// The third-party snapshots (read-only).
pub fn third_party() -> PathBuf {
    if let Ok(d) = std::env::var("ECHOMESH_THIRD_PARTY") {
        return PathBuf::from(d);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/third-party")
}

static SOL_BIN: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The directory holding `Spot-On-Lite-Daemon` and `Spot-On-Lite-Daemon-Child`, built from
/// the snapshot on first use and cached by a hash of its sources.
pub fn spot_on_lite_bin() -> PathBuf {
    let mut g = SOL_BIN.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(p) = g.as_ref() {
        return p.clone();
    }
    let p = build_spot_on_lite().unwrap_or_else(|e| panic!("building Spot-On-Lite: {e:#}"));
    *g = Some(p.clone());
    p
}

fn hash_tree(dir: &Path, h: &mut blake3::Hasher) -> anyhow::Result<()> {
    let mut entries: Vec<_> = std::fs::read_dir(dir)?.collect::<Result<_, _>>()?;
    entries.sort_by_key(|e| e.file_name());
    for e in entries {
        let p = e.path();
        h.update(e.file_name().as_encoded_bytes());
        if e.file_type()?.is_dir() {
            hash_tree(&p, h)?;
        } else {
            h.update(&std::fs::read(&p)?);
        }
    }
    Ok(())
}

fn build_spot_on_lite() -> anyhow::Result<PathBuf> {
    let src = third_party().join("spot-on-lite");
    if !src.join("spot-on-lite-daemon.pro").exists() {
        bail!(
            "{} not found: the Spot-On-Lite snapshot is in the team's shared/third-party (set ECHOMESH_THIRD_PARTY)",
            src.display()
        );
    }
    let mut h = blake3::Hasher::new();
    hash_tree(&src, &mut h)?;
    let key = &h.finalize().to_hex()[..16];
    let home = std::env::var("HOME").unwrap_or_else(|_| "/tmp".into());
    let out = PathBuf::from(home).join(format!(".cache/echomesh/spot-on-lite-{key}"));
    if out.join("Spot-On-Lite-Daemon").exists() && out.join("Spot-On-Lite-Daemon-Child").exists() {
        return Ok(out);
    }
    let work = tempfile::tempdir()?;
    let tree = work.path().join("spot-on-lite");
    crate::run_ok(Command::new("cp").arg("-r").arg(&src).arg(&tree));
    crate::run_ok(Command::new("chmod").args(["-R", "u+w"]).arg(&tree));
    for (mk, pro) in [
        ("Makefile.daemon", "spot-on-lite-daemon.pro"),
        ("Makefile.daemon_child", "spot-on-lite-daemon-child.pro"),
    ] {
        crate::run_ok(
            Command::new("qmake")
                .env("QT_SELECT", "qt5")
                .args(["-o", mk, pro])
                .current_dir(&tree),
        );
        crate::run_ok(
            Command::new("make")
                .args(["-f", mk, "-j2", "-s"])
                .current_dir(&tree),
        );
    }
    let staging = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::create_dir_all(&staging)?;
    for b in ["Spot-On-Lite-Daemon", "Spot-On-Lite-Daemon-Child"] {
        std::fs::copy(tree.join(b), staging.join(b)).with_context(|| format!("copying {b}"))?;
    }
    let _ = std::fs::remove_dir_all(&out);
    std::fs::rename(&staging, &out)?;
    Ok(out)
}

/// A TCP port for a listener that binds it later (see [`crate::free_port`]).
pub fn free_tcp_port() -> u16 {
    crate::free_port()
}

const CIPHERS: &str = "HIGH:!aNULL:!eNULL:!3DES:!EXPORT:!SSLv3:@STRENGTH";

/// One Spot-On-Lite daemon with TLS listeners and outgoing peers on 127.0.0.1.
pub struct SolConfig {
    /// Listener ports (TLS, ECDSA P-384).
    pub listeners: Vec<u16>,
    /// Outgoing peers (TLS).
    pub peers: Vec<SocketAddr>,
    /// Duplicate lifetime (`congestion_control_lifetime`), seconds.
    pub congestion_lifetime: u64,
    /// Silence timeout of every link, seconds (capabilities go out every max(7.5, silence/2)).
    pub silence: u64,
    /// Plain TCP instead of TLS on listeners and peers.
    pub plain: bool,
}

pub struct Sol {
    pub dir: PathBuf,
    child: Option<Child>,
    pub listeners: Vec<SocketAddr>,
}

impl Sol {
    pub fn start(dir: &Path, cfg: &SolConfig) -> Sol {
        let bin = spot_on_lite_bin();
        std::fs::create_dir_all(dir).expect("mkdir");
        let d = dir.display();
        let mut conf = format!(
            "certificates_file = {d}/certificates.sqlite\n\
             child_process_file = {}\n\
             congestion_control_file = {d}/congestion.sqlite\n\
             congestion_control_lifetime = {}\n\
             git_local_directory =\n\
             git_script =\n\
             local_so_rcvbuf_so_sndbuf = 65536\n\
             local_socket_server_directory = {d}\n\
             log_file = {d}/daemon.log\n\
             maximum_accumulated_bytes = 8388608\n\
             remote_identities_file = {d}/identities.sqlite\n\
             remove_temporary_files = false\n\
             type_capabilities = 0014\n\
             type_identity = 0095a\n\
             type_spot_on_lite_client = 0111\n",
            bin.join("Spot-On-Lite-Daemon-Child").display(),
            cfg.congestion_lifetime
        );
        let eom = r"\r\n\r\n\r\n";
        let (ciphers, key) = if cfg.plain {
            ("", "")
        } else {
            (CIPHERS, "384")
        };
        for (i, port) in cfg.listeners.iter().enumerate() {
            conf.push_str(&format!(
                "listener/{} = \"127.0.0.1,{port},16,{ciphers},{key},{},5,{eom},65536,30,tcp,1095\"\n",
                i + 1,
                cfg.silence
            ));
        }
        for (i, p) in cfg.peers.iter().enumerate() {
            conf.push_str(&format!(
                "peer/{} = \"{},{},1,{ciphers},{key},{},-1,{eom},65536,30,tcp,1\"\n",
                i + 1,
                p.ip(),
                p.port(),
                cfg.silence
            ));
        }
        let path = dir.join("spot-on-lite.conf");
        std::fs::write(&path, conf).expect("write conf");
        let check = Command::new(bin.join("Spot-On-Lite-Daemon"))
            .arg("--validate-configuration-file")
            .arg(&path)
            .output()
            .expect("run Spot-On-Lite-Daemon");
        assert!(
            check.status.success(),
            "Spot-On-Lite refuses its configuration: {}{}",
            String::from_utf8_lossy(&check.stdout),
            String::from_utf8_lossy(&check.stderr)
        );
        let out = std::fs::File::create(dir.join("stdout.log")).expect("log");
        // Its own process group: the daemon signals its whole group (SIGUSR2 at start).
        use std::os::unix::process::CommandExt as _;
        let child = Command::new(bin.join("Spot-On-Lite-Daemon"))
            .arg("--configuration-file")
            .arg(&path)
            .arg("--keep-terminal")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn Spot-On-Lite-Daemon");
        let listeners: Vec<SocketAddr> = cfg
            .listeners
            .iter()
            .map(|p| SocketAddr::from(([127, 0, 0, 1], *p)))
            .collect();
        let sol = Sol {
            dir: dir.to_path_buf(),
            child: Some(child),
            listeners: listeners.clone(),
        };
        // Listeners open about 5 s after start.
        for l in &listeners {
            crate::wait_for(Duration::from_secs(30), "Spot-On-Lite to listen", || {
                std::net::TcpStream::connect_timeout(l, Duration::from_millis(200))
                    .ok()
                    .map(|_| ())
            });
        }
        sol
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<_> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Stop the daemon and its children (the whole process group).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let group = format!("-{}", c.id());
            let _ = Command::new("kill").args(["-TERM", "--", &group]).status();
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            while std::time::Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill").args(["-KILL", "--", &group]).status();
            let _ = c.wait();
        }
    }
}

impl Drop for Sol {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "--- Spot-On-Lite log {} ---\n{}",
                self.dir.display(),
                self.log_tail()
            );
        }
        self.stop();
    }
}

/// TLS as the Echo client offers it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EchoTls {
    Plain,
    /// TLS 1.2 and 1.3.
    Any,
    /// TLS 1.2 only (Smoke on Android 14+).
    Tls12Only,
}

/// An Echo client: frames out, frames in (each complete frame, exact bytes), a `0014`
/// keep-alive every few seconds so that Spot-On-Lite's silence timeout never ends it.
pub struct EchoClient {
    out: mpsc::UnboundedSender<Vec<u8>>,
    frames: mpsc::UnboundedReceiver<Bytes>,
    /// The server certificate (DER), for TLS.
    pub server_cert: Option<Vec<u8>>,
    pub tls_version: Option<rustls::ProtocolVersion>,
}

/// Accepts any server certificate (the tests compare it themselves); handshake signatures
/// are still checked, TLS 1.2 and 1.3.
#[derive(Debug)]
struct AcceptAny {
    sigs: echomesh_client::tls::HandshakeSignatures,
}

impl rustls::client::danger::ServerCertVerifier for AcceptAny {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    echomesh_client::delegate_handshake_signatures!();
}

impl EchoClient {
    pub async fn connect(addr: SocketAddr, tls: EchoTls) -> anyhow::Result<EchoClient> {
        let sock = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        sock.set_nodelay(true)?;
        if tls == EchoTls::Plain {
            return Ok(Self::serve(sock, None, None));
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = match tls {
            EchoTls::Tls12Only => &[&rustls::version::TLS12],
            _ => &[&rustls::version::TLS13, &rustls::version::TLS12],
        };
        let cfg = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAny {
                sigs: echomesh_client::tls::HandshakeSignatures::tls12_and_13(),
            }))
            .with_no_client_auth();
        let conn = tokio_rustls::TlsConnector::from(Arc::new(cfg));
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        let s = tokio::time::timeout(Duration::from_secs(20), conn.connect(name, sock))
            .await
            .context("TLS handshake timed out")?
            .context("TLS handshake")?;
        let (_, c) = s.get_ref();
        let cert = c
            .peer_certificates()
            .and_then(|v| v.first())
            .map(|c| c.to_vec());
        let version = c.protocol_version();
        Ok(Self::serve(s, cert, version))
    }

    /// Connect and announce `0111` (as Spot-On-Lite servers do): a Spot-On-Lite daemon then
    /// sends this client everything, unfiltered.
    pub async fn connect_unfiltered(addr: SocketAddr, tls: EchoTls) -> anyhow::Result<EchoClient> {
        let c = Self::connect(addr, tls).await?;
        c.send(&marker_frame());
        Ok(c)
    }

    fn serve<S>(
        stream: S,
        server_cert: Option<Vec<u8>>,
        tls_version: Option<rustls::ProtocolVersion>,
    ) -> EchoClient
    where
        S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(stream);
        let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Vec<u8>>();
        let (in_tx, in_rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            let period = Duration::from_secs(5);
            let mut keepalive =
                tokio::time::interval_at(tokio::time::Instant::now() + period, period);
            loop {
                let f = tokio::select! {
                    _ = keepalive.tick() => control_frame("0014", b"dGVzdA==").to_vec(),
                    f = out_rx.recv() => match f {
                        Some(f) => f,
                        None => return,
                    },
                };
                if wr.write_all(&f).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            let mut split = Splitter::new(64 << 20, Duration::from_secs(3600));
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let now = std::time::Instant::now();
                split.push(&buf[..n], now);
                while let Ok(Some(f)) = split.next_frame(now) {
                    if in_tx.send(f).is_err() {
                        return;
                    }
                }
            }
        });
        EchoClient {
            out: out_tx,
            frames: in_rx,
            server_cert,
            tls_version,
        }
    }

    pub fn send(&self, frame: &[u8]) {
        let _ = self.out.send(frame.to_vec());
    }

    /// The next data frame (control and empty frames are skipped), or `None` after
    /// `timeout` or when the connection closed.
    pub async fn recv_data(&mut self, timeout: Duration) -> Option<Bytes> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .ok()??;
            if is_data(&f) {
                return Some(f);
            }
        }
    }

    /// The content of the next control frame of type `ty` (others are skipped), or `None`
    /// after `timeout`.
    pub async fn recv_control(&mut self, ty: &str, timeout: Duration) -> Option<Vec<u8>> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let f = tokio::time::timeout_at(deadline, self.frames.recv())
                .await
                .ok()??;
            if let Ok(echomesh_proto::bridge::Frame::Control { ty: t, content }) =
                echomesh_proto::bridge::frame::classify(&f)
            {
                if t == ty {
                    return Some(content.to_vec());
                }
            }
        }
    }

    /// Every frame that is not a well-formed control or empty frame (data and junk alike)
    /// arriving until `quiet` passes without one: what a relay must never have passed on.
    pub async fn drain_non_control(&mut self, quiet: Duration) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout(quiet, self.frames.recv()).await {
            let control = matches!(
                echomesh_proto::bridge::frame::classify(&f),
                Ok(echomesh_proto::bridge::Frame::Control { .. }
                    | echomesh_proto::bridge::Frame::Empty)
            );
            if !control {
                out.push(f);
            }
        }
        out
    }

    /// Every data frame that arrives until `quiet` passes without one.
    pub async fn drain_data(&mut self, quiet: Duration) -> Vec<Bytes> {
        let mut out = Vec::new();
        while let Some(f) = self.recv_data(quiet).await {
            out.push(f);
        }
        out
    }

    /// Whether the server closed the connection within `timeout`.
    pub async fn closed_within(&mut self, timeout: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.frames.recv()).await {
                Err(_) => return false,
                Ok(None) => return true,
                Ok(Some(_)) => {}
            }
        }
    }
}

/// Whether a frame is a data frame (not control, not empty).
pub fn is_data(f: &[u8]) -> bool {
    matches!(
        echomesh_proto::bridge::frame::classify(f),
        Ok(echomesh_proto::bridge::Frame::Data { .. })
    )
}

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(b)
}

/// A data frame as Smoke sends it (Content-Length, Content-Type, a random ETag).
pub fn smoke_frame(content: &[u8]) -> Vec<u8> {
    let body = format!("content={}", b64(content));
    format!(
        "POST HTTP/1.1\r\nContent-Length: {}\r\nContent-Type: application/x-www-form-urlencoded\r\nETag: {}\r\n\r\n{body}\r\n\r\n\r\n",
        body.len() + EOM.len(),
        hex::encode(rand::random::<[u8; 16]>())
    )
    .into_bytes()
}

/// A frame addressed to `identity` (destination tag HMAC-SHA512), carrying `label` and
/// random bytes so every frame is unique.
pub fn addressed_frame(identity: &[u8], label: &str) -> Vec<u8> {
    let mut data = label.as_bytes().to_vec();
    data.push(0);
    data.extend_from_slice(&rand::random::<[u8; 48]>());
    let tag = FilterInput::tag_for(identity, &data);
    data.extend_from_slice(&tag);
    smoke_frame(&data)
}

/// The label an `addressed_frame` carries, if `f` is one.
pub fn label_of(f: &[u8]) -> Option<String> {
    let content = match echomesh_proto::bridge::frame::classify(f).ok()? {
        echomesh_proto::bridge::Frame::Data { content } => content,
        _ => return None,
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(content.trim_ascii())
        .ok()?;
    let end = raw.iter().position(|&b| b == 0)?;
    String::from_utf8(raw[..end].to_vec()).ok()
}

/// `0095a`: register `identity` for the filter.
pub fn identity_frame(identity: &[u8]) -> Vec<u8> {
    control_frame("0095a", format!("{};sha-512", b64(identity)).as_bytes())
}

/// `0111`: "I am Spot-On-Lite".
pub fn marker_frame() -> Vec<u8> {
    echomesh_proto::bridge::frame::spot_on_lite_frame()
}
