//! Implementations of the admin and client commands.

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use bytes::Bytes;
use echomesh_client::{Followed, Follower};
use echomesh_proto::admin as api;
use echomesh_proto::drain::Phase;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::wire::{ClientEvent, SubscribeFilter};

use crate::admin_client::AdminClient;
use crate::{Cli, Command};

pub async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let json = cli.json;
    let admin = || AdminClient::new(&cli.admin, &cli.token_file);
    match cli.command {
        Command::Status => {
            let s: api::Status = admin()?.get(api::PATH_STATUS).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&s)?);
            } else {
                println!("id           {}", s.id);
                println!("fingerprint  {}", s.fingerprint);
                println!("version      {} (protocol {})", s.version, s.protocol);
                println!("cluster      {}", s.cluster);
                println!("listen       {} (advertised as {})", s.listen, s.advertise);
                println!(
                    "ready        {}{}",
                    s.ready,
                    if s.draining { " (draining)" } else { "" }
                );
                println!(
                    "neighbors    {} up of {}",
                    s.neighbors_up, s.neighbors_total
                );
                println!("clients      {}", s.client_sessions);
                println!("uptime       {}", crate::render::duration(s.uptime_secs));
                if let Some(b) = &s.bridge {
                    if let Some(l) = &b.listen {
                        println!(
                            "echo         {l} ({}), {} clients",
                            if b.tls { "TLS" } else { "plain TCP" },
                            b.clients
                        );
                    }
                    if let Some(c) = &b.cert_sha256 {
                        println!("echo cert    sha256 {c} (Smoke users compare this)");
                    }
                    println!("echo links   {} up of {}", b.links_up, b.links_total);
                }
                if s.draining {
                    println!("drain        {}", drain_line(&s.drain));
                }
            }
        }
        Command::Neighbors {
            action: Some(action),
        } => {
            let a = admin()?;
            let info: api::NeighborInfo = match action {
                crate::NeighborsCmd::Add { spec } => {
                    a.post(api::PATH_NEIGHBORS, &api::NeighborAddRequest { spec })
                        .await?
                }
                crate::NeighborsCmd::Remove { id } => {
                    let fp = resolve_neighbor(&a, &id).await?;
                    a.delete(&api::PATH_NEIGHBOR.replace("{fingerprint}", &fp))
                        .await?
                }
                crate::NeighborsCmd::SetMode { id, mode } => {
                    let fp = resolve_neighbor(&a, &id).await?;
                    a.put(
                        &api::PATH_NEIGHBOR_MODE.replace("{fingerprint}", &fp),
                        &api::NeighborModeRequest { mode },
                    )
                    .await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!(
                    "{} ({}) {} mode {} state {}",
                    info.id, info.fingerprint, info.addr, info.mode, info.state
                );
            }
        }
        Command::Neighbors { action: None } => {
            let list: Vec<api::NeighborInfo> = admin()?.get(api::PATH_NEIGHBORS).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("no neighbors yet: run `echomeshctl invite` here and `echomeshctl join TOKEN` on the other node");
            } else {
                println!(
                    "{:<15} {:<4} {:<16} {:<5} {:<8} {:>9}  {:<22} ERROR",
                    "ID", "KIND", "STATE", "MODE", "ORIGIN", "RTT", "ADDR"
                );
                for n in list {
                    let rtt = n
                        .rtt_ms
                        .map(|r| format!("{r:.2} ms"))
                        .unwrap_or_else(|| "-".into());
                    let state = match n.departure.as_str() {
                        "up" => n.state.clone(),
                        d => format!("{} ({d})", n.state),
                    };
                    println!(
                        "{:<15} {:<4} {:<16} {:<5} {:<8} {:>9}  {:<22} {}",
                        n.id,
                        n.kind,
                        state,
                        n.mode,
                        n.origin,
                        rtt,
                        n.addr,
                        n.last_error.unwrap_or_default()
                    );
                }
            }
        }
        Command::Invite { ttl } => {
            let r: api::InviteResponse = admin()?
                .post(api::PATH_INVITES, &api::InviteRequest { ttl_secs: ttl })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if let Some(w) = &r.warning {
                    eprintln!("warning: {w}");
                }
                eprintln!(
                    "one-time invite for {}, valid until {} (run on the other node: echomeshctl join TOKEN):",
                    r.addr,
                    crate::render::local_time(r.expires_unix)
                );
                println!("{}", r.token);
            }
        }
        Command::Join { token } => {
            let r: api::JoinResponse = admin()?
                .post(api::PATH_JOIN, &api::JoinRequest { token })
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "joined {} ({}) at {}; it is now a pinned neighbor",
                    r.neighbor.id, r.neighbor.fingerprint, r.neighbor.addr
                );
            }
        }
        Command::Drain { wait, deadline } => {
            use echomesh_proto::admin::DrainStatus;
            let a = admin()?;
            let mut st: DrainStatus = a
                .post(
                    api::PATH_DRAIN,
                    &api::DrainRequest {
                        deadline_secs: deadline,
                    },
                )
                .await?;
            let mut last = String::new();
            while wait && !matches!(st.phase, Phase::Done | Phase::TimedOut) {
                let line = drain_line(&st);
                if line != last {
                    eprintln!("drain: {line}");
                    last = line;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                st = a.get(api::PATH_DRAIN).await?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else if st.safe_to_stop {
                println!(
                    "drained: safe to stop ({} ozones handed off)",
                    st.ozones_total
                );
            } else if st.phase == Phase::TimedOut {
                println!(
                    "drain incomplete: {}",
                    st.detail.clone().unwrap_or_default()
                );
            } else {
                println!(
                    "draining ({}); `echomeshctl drain --wait` shows progress",
                    st.phase
                );
            }
            if wait && !st.safe_to_stop {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Health { ready } => {
            let path = if ready { "/readyz" } else { "/healthz" };
            let code = admin()?.probe(path).await?;
            if json {
                println!("{}", serde_json::json!({"path": path, "status": code}));
            } else {
                println!("{path}: {code}");
            }
            if code != 200 {
                return Ok(ExitCode::FAILURE);
            }
        }
        Command::Topology { dot } => {
            let t: echomesh_proto::admin::TopologyView = admin()?.get(api::PATH_TOPOLOGY).await?;
            if dot {
                print!("{}", t.to_dot());
            } else if json {
                println!("{}", serde_json::to_string_pretty(&t)?);
            } else {
                print_topology(&t);
            }
        }
        Command::Smoke(cmd) => crate::smoke::run(admin()?, cmd, json).await?,
        Command::Members => {
            let m: api::MembersView = admin()?.get(api::PATH_MEMBERS).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_members(&m);
            }
        }
        Command::Console { no_browser } => {
            let client = admin()?;
            let code: api::ConsoleLoginCode = client
                .post(api::PATH_CONSOLE_LOGIN_CODES, &serde_json::json!({}))
                .await?;
            let url = format!("{}{}", client.base(), code.path);
            if json {
                println!(
                    "{}",
                    serde_json::json!({"url": url, "expires_in_secs": code.expires_in_secs})
                );
            } else {
                eprintln!(
                "one-time console login, valid for {} s and only once (the console then keeps its own session):",
                code.expires_in_secs
            );
                if !no_browser && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    open_browser(&url);
                }
                println!("{url}");
            }
        }
        Command::Undrain => {
            let st: echomesh_proto::admin::DrainStatus = admin()?
                .post(api::PATH_UNDRAIN, &serde_json::json!({}))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&st)?);
            } else {
                println!("serving again");
            }
        }
        Command::Reload => {
            let r: echomesh_proto::admin::ReloadReport = admin()?
                .post(api::PATH_RELOAD, &serde_json::json!({}))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                if r.applied.is_empty() && r.restart_needed.is_empty() {
                    println!("configuration re-read: nothing changed");
                }
                for a in &r.applied {
                    println!("applied: {a}");
                }
                for n in &r.restart_needed {
                    println!("needs a restart: {n}");
                }
            }
        }
        Command::Version => {
            let ctl = env!("CARGO_PKG_VERSION");
            let node = admin()?.get::<api::Status>(api::PATH_STATUS).await;
            if json {
                let v = serde_json::json!({
                    "ctl": ctl,
                    "protocol": echomesh_proto::wire::PROTOCOL_VERSION,
                    "node": node.as_ref().ok().map(|s| &s.version),
                    "node_protocol": node.as_ref().ok().map(|s| s.protocol),
                });
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                println!(
                    "echomeshctl {ctl} (protocol {})",
                    echomesh_proto::wire::PROTOCOL_VERSION
                );
                match node {
                    Ok(s) => println!(
                        "echomesh-node {} (protocol {}) at {}",
                        s.version, s.protocol, cli.admin
                    ),
                    Err(e) => println!("echomesh-node: unknown ({e})"),
                }
            }
        }
        Command::Inject {
            node,
            count,
            size,
            hops,
            payload,
        } => {
            return inject(&node, count, size, hops, payload, json).await;
        }
        Command::Tail {
            node,
            count,
            timeout,
            echo_frames,
        } => {
            let filter = if echo_frames {
                SubscribeFilter::Tags(vec![echomesh_proto::tags::bridge_tag()])
            } else {
                SubscribeFilter::All
            };
            return tail(&node, count, timeout, filter, json).await;
        }
        Command::Bench(args) => return crate::bench::run(args, json).await,
        Command::Sim(args) => return crate::sim::run(args, json),
        Command::Keys(cmd) => return crate::messaging::keys(cmd, json).await,
        Command::Send(args) => return crate::messaging::send(args, json).await,
        Command::Recv(args) => return crate::messaging::recv(args, json).await,
        Command::Ozone(cmd) => return crate::messaging::ozone(cmd, json).await,
    }
    Ok(ExitCode::SUCCESS)
}

fn drain_line(st: &echomesh_proto::admin::DrainStatus) -> String {
    format!(
        "{} after {}: clients moved {}/{} ({} still connected), ozones handed off {}/{}, {} queued, {} neighbors told{}",
        st.phase,
        crate::render::duration(st.elapsed_secs),
        st.clients_moved,
        st.clients_total,
        st.clients_connected,
        st.ozones_done,
        st.ozones_total,
        crate::render::bytes(st.queued_bytes as u64),
        st.neighbors_told,
        st.detail.as_deref().map(|d| format!("; {d}")).unwrap_or_default()
    )
}

fn print_topology(t: &echomesh_proto::admin::TopologyView) {
    println!(
        "{:<11} {:<9} {:<12} {:<22} {:>8}  SOFTWARE",
        "NODE", "STATE", "CLUSTER", "ADDR", "HEARD"
    );
    for n in &t.nodes {
        let heard = if n.this_node {
            "(this)".to_string()
        } else {
            format!("{} s", n.last_heard_secs)
        };
        println!(
            "{:<11} {:<9} {:<12} {:<22} {:>8}  {} (protocol {})",
            n.id, n.state, n.cluster, n.addr, heard, n.software, n.protocol
        );
    }
    println!();
    println!(
        "{:<11} {:<11} {:<6} {:>9}  MODE",
        "LINK", "", "STATE", "RTT"
    );
    for l in &t.links {
        let rtt = l
            .rtt_ms
            .map(|r| format!("{r:.2} ms"))
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<11} {:<11} {:<6} {:>9}  {}",
            l.a, l.b, l.state, rtt, l.mode
        );
    }
}

fn print_members(m: &api::MembersView) {
    println!(
        "{} ({}) in cluster {}; heartbeat {} ms, suspect after {} ms, failed after {} ms",
        m.id, m.state, m.cluster, m.heartbeat_ms, m.suspect_ms, m.fail_ms
    );
    println!(
        "{:<11} {:<12} {:<9} {:>10} {:>9} {:>6} {:>6} {:>6}",
        "MEMBER", "CLUSTER", "STATE", "SINCE", "HEARD", "SUSP", "FAILED", "FLAPS"
    );
    let now_ms = echomesh_proto::clock::unix_ms();
    for x in &m.members {
        let since = format!(
            "{:.1} s",
            now_ms.saturating_sub(x.since_unix_ms) as f64 / 1000.0
        );
        let heard = match (x.last_heard_ms, x.heartbeats) {
            (Some(ms), true) => format!("{ms} ms"),
            (Some(_), false) => "(no hb)".into(),
            (None, _) => "-".into(),
        };
        println!(
            "{:<11} {:<12} {:<9} {:>10} {:>9} {:>6} {:>6} {:>6}",
            x.id,
            x.cluster.as_deref().unwrap_or("?"),
            x.state,
            since,
            heard,
            x.suspicions,
            x.failures,
            x.flaps
        );
    }
}

/// A neighbor named by fingerprint or by the short ID `neighbors` shows.
async fn resolve_neighbor(a: &AdminClient, id: &str) -> anyhow::Result<String> {
    let list: Vec<api::NeighborInfo> = a.get(api::PATH_NEIGHBORS).await?;
    let found: Vec<&api::NeighborInfo> = list
        .iter()
        .filter(|n| n.fingerprint.eq_ignore_ascii_case(id) || n.id.eq_ignore_ascii_case(id))
        .collect();
    match found.as_slice() {
        [n] => Ok(n.fingerprint.clone()),
        [] => bail!("{id} is not a neighbor of this node (see `echomeshctl neighbors`)"),
        _ => bail!("{id} matches several neighbors; use the full fingerprint"),
    }
}

async fn inject(
    node: &crate::target_node::NodeTarget,
    count: u64,
    size: usize,
    hops: u8,
    payload: Option<String>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let (ep, session) = crate::target_node::connect(node).await?;
    const BATCH: u64 = 256;
    let fixed = payload.map(|p| Bytes::from(p.into_bytes()));
    // Batches are made once and kept until acknowledged: after a lost connection the same
    // bytes are sent again, and the node's seen-cache makes the retry harmless.
    let batches = (0..count.div_ceil(BATCH)).map(|b| {
        let n = (count - b * BATCH).min(BATCH);
        (0..n)
            .map(|_| {
                let p = match &fixed {
                    Some(p) => p.clone(),
                    None => {
                        let mut v = vec![0u8; size];
                        rand::Rng::fill(&mut rand::rng(), &mut v[..]);
                        Bytes::from(v)
                    }
                };
                EchoPacket::new(p, hops, None)
            })
            .collect::<Vec<_>>()
    });
    let sent = count;
    let r = echomesh_client::inject::inject_all(
        &ep,
        session,
        crate::target_node::AGENT,
        batches,
        echomesh_client::follow::RESUME_FOR,
        |_, _, _| {},
    )
    .await?;
    crate::target_node::hang_up(&ep).await;
    if r.reconnects > 0 {
        eprintln!(
            "inject: the connection broke {} times; unacknowledged batches were sent again",
            r.reconnects
        );
    }
    let (accepted, duplicates, rejected) = (r.accepted, r.duplicates, r.rejected);
    if json {
        println!(
            "{}",
            serde_json::json!({"sent": sent, "accepted": accepted, "duplicates": duplicates, "rejected": rejected})
        );
    } else {
        println!("injected {sent} packets: {accepted} accepted, {duplicates} duplicates, {rejected} rejected");
    }
    Ok(if rejected > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Payload as text when it is printable UTF-8, else hex.
pub fn render_payload(p: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(p) {
        Ok(s) if s.chars().all(|c| !c.is_control() || c == '\t') => (s.to_string(), "utf8"),
        _ => (hex::encode(p), "hex"),
    }
}

async fn tail(
    node: &crate::target_node::NodeTarget,
    count: Option<u64>,
    timeout: Option<f64>,
    filter: SubscribeFilter,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let (ep, mut session) = crate::target_node::connect(node).await?;
    session.subscribe(filter.clone()).await?;
    eprintln!("tail: subscribed to {} ({})", node.addr, session.node_id);
    let mut session = Follower::new(ep.clone(), session, crate::target_node::AGENT, Some(filter));
    let r = tail_follow(&mut session, count, timeout, json).await;
    // Say goodbye, so the node frees the session now rather than at its idle timeout.
    session.close();
    crate::target_node::hang_up(&ep).await;
    r
}

async fn tail_follow(
    session: &mut Follower,
    count: Option<u64>,
    timeout: Option<f64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let deadline =
        timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let mut seen = 0u64;
    let stdout = std::io::stdout();
    loop {
        if count.is_some_and(|c| seen >= c) {
            return Ok(ExitCode::SUCCESS);
        }
        let ev = match deadline {
            Some(d) => match tokio::time::timeout_at(d, session.next()).await {
                Ok(ev) => ev?,
                Err(_) => {
                    if let Some(c) = count {
                        eprintln!("echomeshctl: timeout after {seen} of {c} packets");
                        return Ok(ExitCode::FAILURE);
                    }
                    return Ok(ExitCode::SUCCESS);
                }
            },
            None => session.next().await?,
        };
        let ev = match ev {
            Some(Followed::Moved { to, reason }) => {
                eprintln!("tail: moved to {to} ({reason})");
                continue;
            }
            Some(Followed::Event(ev)) => Some(ev),
            None => None,
        };
        match ev {
            Some(ClientEvent::Deliver(batch)) => {
                let mut out = stdout.lock();
                for p in batch {
                    if count.is_some_and(|c| seen >= c) {
                        break;
                    }
                    seen += 1;
                    let (text, enc) = render_payload(&p.payload);
                    if json {
                        let v = serde_json::json!({"id": hex::encode(p.id), "payload": text, "encoding": enc, "hops_left": p.hops_left});
                        writeln!(out, "{v}").context("writing to stdout")?;
                    } else {
                        writeln!(out, "{text}").context("writing to stdout")?;
                    }
                }
                out.flush().ok();
            }
            Some(ClientEvent::Lagged { dropped }) => {
                eprintln!("echomeshctl: warning: the node dropped {dropped} packets because this client read too slowly");
            }
            Some(ClientEvent::Error { message, .. }) => bail!("node refused: {message}"),
            Some(_) => {}
            None => bail!("node closed the session after {seen} packets"),
        }
    }
}

/// Open `url` in the desktop's browser if there is one; silently nothing otherwise (the URL
/// is printed anyway).
fn open_browser(url: &str) {
    let opener = if cfg!(target_os = "macos") {
        "open"
    } else {
        "xdg-open"
    };
    let has_display = cfg!(target_os = "macos")
        || std::env::var_os("DISPLAY").is_some()
        || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if has_display {
        let _ = std::process::Command::new(opener)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
    }
}
