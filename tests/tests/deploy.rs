//! Deployment assets do what they say, checked with what runs on this machine (no systemd as
//! PID 1, no Docker engine): the systemd unit verifies, and its ExecStart, ExecReload and
//! stop signal, run as plain commands, start a node, reload it and drain it to exit 0 within
//! TimeoutStopSec; the container's entrypoint and healthcheck commands work as processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use echomesh_tests::{bin, bin_dir, wait_for};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `Key=value` lines of a unit file's [Service] section.
fn service_keys(unit: &str) -> Vec<(String, String)> {
    unit.lines()
        .skip_while(|l| l.trim() != "[Service]")
        .skip(1)
        .take_while(|l| !l.starts_with('['))
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

fn key<'a>(keys: &'a [(String, String)], k: &str) -> &'a str {
    keys.iter()
        .find(|(x, _)| x == k)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("unit has no {k}"))
}

#[test]
fn systemd_unit_verifies_and_its_start_reload_and_stop_work() {
    let unit = std::fs::read_to_string(repo().join("deploy/systemd/echomesh.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let node = bin("echomesh-node");
    let local = unit.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));

    // systemd-analyze verify (the binary path pointed at the one just built).
    let copy = dir.path().join("echomesh.service");
    std::fs::write(&copy, &local).unwrap();
    let analyze = Path::new("/usr/bin/systemd-analyze");
    assert!(
        analyze.exists(),
        "systemd-analyze is missing (Debian package systemd)"
    );
    let out = Command::new(analyze)
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // The unit's own commands, with its paths mapped into a temporary directory.
    let keys = service_keys(&local);
    let cfg = dir.path().join("etc/echomesh.toml");
    let data = dir.path().join("state");
    std::fs::create_dir_all(cfg.parent().unwrap()).unwrap();
    std::fs::write(
        &cfg,
        "listen = \"127.0.0.1:0\"\nadmin = \"127.0.0.1:0\"\ndrain_deadline_secs = 20\n",
    )
    .unwrap();
    let map = |s: &str| {
        s.replace("/etc/echomesh/echomesh.toml", &cfg.display().to_string())
            .replace("/var/lib/echomesh", &data.display().to_string())
    };
    let start: Vec<String> = map(key(&keys, "ExecStart"))
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(Path::new(&start[0]), node.as_path());
    let log = std::fs::File::create(dir.path().join("node.log")).unwrap();
    let mut child = Command::new(&start[0])
        .args(&start[1..])
        .env("RUST_LOG", "info")
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id();
    let read_log = || std::fs::read_to_string(dir.path().join("node.log")).unwrap_or_default();
    wait_for(Duration::from_secs(30), "the node to serve", || {
        read_log().contains("node serving").then_some(())
    });

    // ExecReload, with $MAINPID as systemd sets it.
    let reload = key(&keys, "ExecReload").replace("$MAINPID", &pid.to_string());
    let st = Command::new("sh").arg("-c").arg(&reload).status().unwrap();
    assert!(st.success(), "{reload}");
    wait_for(Duration::from_secs(10), "the reload to apply", || {
        read_log().contains("configuration reloaded").then_some(())
    });

    // Stop: KillSignal, then the node must drain and exit 0 within TimeoutStopSec.
    let signal = key(&keys, "KillSignal")
        .trim_start_matches("SIG")
        .to_string();
    let timeout: u64 = key(&keys, "TimeoutStopSec").parse().unwrap();
    assert!(
        timeout > 20,
        "TimeoutStopSec must exceed the drain deadline"
    );
    let started = Instant::now();
    let st = Command::new("kill")
        .args([format!("-{signal}"), pid.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        assert!(
            started.elapsed() < Duration::from_secs(timeout),
            "no exit within TimeoutStopSec={timeout}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status}");
    let text = read_log();
    assert!(text.contains("drained; shutting down"), "{text}");
    assert!(
        data.join("node.key").exists(),
        "state lives in the StateDirectory"
    );
}

/// `echomeshctl health` is what the container's HEALTHCHECK runs: 0 while serving, 1 when not
/// ready (with --ready) or when nothing answers.
#[test]
fn the_healthcheck_command_tells_serving_from_draining_and_gone() {
    let root = tempfile::tempdir().unwrap();
    let mut n = echomesh_tests::TestNode::start(root.path(), "n", 0, &[]);
    let admin = format!("http://{}", n.info.admin);
    let health = |ready: bool| {
        let mut c = Command::new(bin("echomeshctl"));
        c.args(["--admin", &admin, "health"]);
        if ready {
            c.arg("--ready");
        }
        c.output().unwrap().status.code()
    };
    assert_eq!(health(false), Some(0));
    assert_eq!(health(true), Some(0));
    n.ctl_ok(&["drain", "--wait"]);
    assert_eq!(health(false), Some(0), "alive while drained");
    assert_eq!(health(true), Some(1), "not ready while drained");
    n.kill9();
    assert_eq!(health(false), Some(1), "gone");
}
