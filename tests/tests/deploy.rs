//! Deployment assets do what they say, checked with what runs on this machine (no systemd as
//! PID 1, no Docker engine): the systemd unit verifies, and its ExecStart, ExecReload and
//! stop signal, run as plain commands, start a node, reload it and drain it to exit 0 within
//! TimeoutStopSec; the container's entrypoint and healthcheck commands work as processes.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use echomesh_tests::{bin, bin_dir, run_ok, wait_for};

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

/// The gateway's unit verifies too (its start is what the gateway tests run).
#[test]
fn gateway_systemd_unit_verifies() {
    let unit =
        std::fs::read_to_string(repo().join("deploy/systemd/echomesh-gateway.service")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let local = unit.replace("/usr/local/bin/", &format!("{}/", bin_dir().display()));
    let copy = dir.path().join("echomesh-gateway.service");
    std::fs::write(&copy, &local).unwrap();
    let out = Command::new("/usr/bin/systemd-analyze")
        .arg("verify")
        .arg(&copy)
        .output()
        .unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(key(&service_keys(&local), "ExecStart").contains("echomesh-gateway --config"));
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

/// The container's entrypoint, run as plain processes (no Docker engine here): three nodes
/// bootstrap through a shared directory as in the compose demo and pin each other; the
/// image's HEALTHCHECK command reports them healthy; STOPSIGNAL drains each to exit 0.
#[test]
fn container_entrypoint_bootstraps_a_mesh_and_its_healthcheck_and_stop_signal_work() {
    let dockerfile = std::fs::read_to_string(repo().join("deploy/container/Dockerfile")).unwrap();
    // What the image must be, read from the Dockerfile itself.
    assert_eq!(
        dockerfile.matches("\nFROM ").count() + usize::from(dockerfile.starts_with("FROM ")),
        2,
        "multi-stage"
    );
    assert!(dockerfile.contains("\nUSER 10001:10001\n"), "non-root");
    assert!(dockerfile.contains("VOLUME [\"/data\"]"));
    let health_line = dockerfile
        .lines()
        .skip_while(|l| !l.starts_with("HEALTHCHECK"))
        .find_map(|l| l.trim().strip_prefix("CMD "))
        .expect("HEALTHCHECK CMD");
    let health: Vec<String> = serde_json::from_str(health_line).unwrap();
    let stop = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("STOPSIGNAL "))
        .expect("STOPSIGNAL")
        .trim()
        .trim_start_matches("SIG")
        .to_string();
    let entrypoint = repo().join("deploy/container/entrypoint.sh");
    assert!(dockerfile
        .contains("COPY deploy/container/entrypoint.sh /usr/local/bin/echomesh-entrypoint"));

    let dir = tempfile::tempdir().unwrap();
    let shared = dir.path().join("bootstrap");
    std::fs::create_dir_all(&shared).unwrap();
    let path = format!(
        "{}:{}",
        bin_dir().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let names = ["a", "b", "c"];
    let mut nodes = Vec::new();
    for name in names {
        let port = echomesh_tests::free_udp_port();
        let admin = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let data = dir.path().join(name);
        let log = std::fs::File::create(dir.path().join(format!("{name}.log"))).unwrap();
        let child = Command::new(&entrypoint)
            .env("PATH", &path)
            .env("RUST_LOG", "info")
            .env("ECHOMESH_DATA_DIR", &data)
            .env("ECHOMESH_LISTEN", format!("127.0.0.1:{port}"))
            .env("ECHOMESH_ADMIN", admin.to_string())
            .env("ECHOMESH_ADVERTISE", format!("127.0.0.1:{port}"))
            .env("ECHOMESH_CLUSTER", "demo")
            .env("BOOTSTRAP_DIR", &shared)
            .env("BOOTSTRAP_NAME", name)
            .env("BOOTSTRAP_PEERS", names.join(" "))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        nodes.push((name, child, admin, data));
    }
    for (name, _, admin, data) in &nodes {
        let token = data.join("admin.token");
        wait_for(
            Duration::from_secs(30),
            &format!("{name} to pin and reach both others"),
            || {
                let out = Command::new(bin("echomeshctl"))
                    .args(["--admin", &format!("http://{admin}"), "--token-file"])
                    .arg(&token)
                    .args(["--json", "neighbors"])
                    .output()
                    .ok()?;
                let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
                let up = v.as_array()?.iter().filter(|n| n["state"] == "up").count();
                (up == 2).then_some(())
            },
        );
        let st = Command::new(&health[0])
            .args(&health[1..])
            .env("PATH", &path)
            .env("ECHOMESH_ADMIN_URL", format!("http://{admin}"))
            .status()
            .unwrap();
        assert!(st.success(), "HEALTHCHECK of {name}");
    }
    for (name, mut child, _, _) in nodes {
        let pid = child.id().to_string();
        assert!(Command::new("kill")
            .args([format!("-{stop}"), pid])
            .status()
            .unwrap()
            .success());
        let started = Instant::now();
        let status = loop {
            if let Some(st) = child.try_wait().unwrap() {
                break st;
            }
            assert!(
                started.elapsed() < Duration::from_secs(75),
                "{name} did not stop"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{name}: {status}");
    }
}

/// hadolint and `docker-compose config` pass on the real files, and catch a broken one.
#[test]
fn dockerfile_and_compose_file_pass_their_linters() {
    let check = repo().join("scripts/check-container");
    run_ok(&mut Command::new(&check));
    let dir = tempfile::tempdir().unwrap();
    let compose = std::fs::read_to_string(repo().join("deploy/container/compose.yaml")).unwrap();
    let bad = dir.path().join("compose.yaml");
    std::fs::write(
        &bad,
        compose.replace("stop_grace_period:", "stop_grace_periodd:"),
    )
    .unwrap();
    let out = Command::new(&check)
        .arg(repo().join("deploy/container/Dockerfile"))
        .arg(&bad)
        .output()
        .unwrap();
    assert!(!out.status.success(), "a misspelt compose key must fail");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("stop_grace_periodd"),
        "{out:?}"
    );
}

/// The Helm chart, checked by scripts/check-helm with a real helm and the Kubernetes schemas
/// (lint, strict validation of the default and the federation rendering, the node accepts the
/// rendered configuration, values that make no sense are refused).
#[test]
fn helm_chart_lints_validates_and_refuses_nonsense() {
    let out = run_ok(
        Command::new(repo().join("scripts/check-helm")).env("NODE_BIN", bin("echomesh-node")),
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("7 bad values refused"));
}

/// The Debian package: it builds (lintian finds no error), installs with `dpkg -i` (binaries,
/// unit, conffile, the `echomesh` user and its 0700 state directory), its unit verifies, and
/// its ExecStart — run as the package's user, as systemd would without being PID 1 here —
/// serves with the packaged configuration, answers `echomeshctl status` with the token in the
/// state directory, and drains to exit 0 on the stop signal; `dpkg --purge` removes it all.
#[test]
fn debian_package_builds_installs_runs_and_purges() {
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false);
    if !is_root {
        eprintln!("debian_package_builds_installs_runs_and_purges: needs root (dpkg -i); not run");
        return;
    }
    let out = tempfile::tempdir().unwrap();
    let built = run_ok(
        Command::new(repo().join("scripts/build-deb"))
            .arg("--bin-dir")
            .arg(bin_dir())
            .arg("--out")
            .arg(out.path()),
    );
    let deb = String::from_utf8_lossy(&built.stdout)
        .lines()
        .last()
        .expect("the package path")
        .to_string();
    assert!(deb.ends_with(".deb") && Path::new(&deb).exists(), "{deb}");
    run_ok(Command::new("lintian").args(["--fail-on", "error", &deb]));

    // A leftover from an interrupted run would make this one meaningless.
    let _ = Command::new("dpkg").args(["--purge", "echomesh"]).output();
    run_ok(Command::new("dpkg").args(["-i", &deb]));
    // Whatever happens below, the machine is left as it was.
    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = Command::new("dpkg").args(["--purge", "echomesh"]).output();
        }
    }
    let purge_guard = Purge;
    let purge = || run_ok(Command::new("dpkg").args(["--purge", "echomesh"]));
    for f in [
        "/usr/bin/echomesh-node",
        "/usr/bin/echomeshctl",
        "/lib/systemd/system/echomesh.service",
        "/etc/echomesh/echomesh.toml",
        "/usr/lib/sysctl.d/30-echomesh.conf",
    ] {
        assert!(Path::new(f).exists(), "{f} not installed");
    }
    run_ok(Command::new("getent").args(["passwd", "echomesh"]));
    let state = run_ok(Command::new("stat").args(["-c", "%U %a", "/var/lib/echomesh"]));
    assert_eq!(
        String::from_utf8_lossy(&state.stdout).trim(),
        "echomesh 700"
    );
    let unit = std::fs::read_to_string("/lib/systemd/system/echomesh.service").unwrap();
    let verify = Command::new("systemd-analyze")
        .args(["verify", "/lib/systemd/system/echomesh.service"])
        .output()
        .unwrap();
    assert!(
        verify.status.success(),
        "systemd-analyze verify: {}",
        String::from_utf8_lossy(&verify.stderr)
    );

    // ExecStart as the unit's User, on ports of its own (the packaged config, else unchanged).
    let keys = service_keys(&unit);
    assert_eq!(key(&keys, "User"), "echomesh");
    let start: Vec<&str> = key(&keys, "ExecStart").split_whitespace().collect();
    // setpriv switches user and execs (the signal reaches the node, as systemd sends it).
    let mut child = Command::new("setpriv")
        .args([
            "--reuid=echomesh",
            "--regid=echomesh",
            "--init-groups",
            "--",
        ])
        .args(&start)
        .args(["--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The node says where it listens in its state directory.
    let admin = wait_for(Duration::from_secs(30), "runtime.json", || {
        let text = std::fs::read_to_string("/var/lib/echomesh/runtime.json").ok()?;
        let info: echomesh_tests::RuntimeInfo = serde_json::from_str(&text).ok()?;
        Some(info.admin.to_string())
    });
    let ctl = |args: &[&str]| {
        Command::new("/usr/bin/echomeshctl")
            .args(["--admin", &format!("http://{admin}")])
            .args(["--token-file", "/var/lib/echomesh/admin.token"])
            .args(args)
            .output()
            .unwrap()
    };
    wait_for(
        Duration::from_secs(30),
        "the packaged node to serve",
        || ctl(&["health", "--ready"]).status.success().then_some(()),
    );
    let status = ctl(&["--json", "status"]);
    assert!(status.status.success(), "{status:?}");
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(v["ready"], true, "{v}");
    let signal = key(&keys, "KillSignal")
        .trim_start_matches("SIG")
        .to_string();
    let timeout: u64 = key(&keys, "TimeoutStopSec").parse().unwrap();
    run_ok(Command::new("kill").args([format!("-{signal}"), child.id().to_string()]));
    let started = Instant::now();
    let exit = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(timeout) {
            let _ = child.kill();
            panic!("no exit within TimeoutStopSec={timeout}");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "{exit}");
    let key_owner = run_ok(Command::new("stat").args(["-c", "%U", "/var/lib/echomesh/node.key"]));
    assert_eq!(
        String::from_utf8_lossy(&key_owner.stdout).trim(),
        "echomesh"
    );

    purge();
    drop(purge_guard);
    for f in [
        "/usr/bin/echomesh-node",
        "/etc/echomesh/echomesh.toml",
        "/lib/systemd/system/echomesh.service",
        "/var/lib/echomesh",
    ] {
        assert!(!Path::new(f).exists(), "{f} left after purge");
    }
    assert!(
        !Command::new("getent")
            .args(["passwd", "echomesh"])
            .status()
            .unwrap()
            .success(),
        "the echomesh user is still there after purge"
    );
}
