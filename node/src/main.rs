//! `echomesh-node`: the relay daemon.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use echomesh_node::config::{Config, Overrides};
use echomesh_proto::drain::Phase;

/// echomesh relay node: peers with neighbors over QUIC, floods encrypted echo packets with
/// duplicate suppression, and serves clients. Never sees plaintext.
///
/// With no arguments it starts a working node in ./echomesh-data, QUIC on UDP 4710, admin
/// API on 127.0.0.1:4711. Settings come from defaults, then --config FILE, then ECHOMESH_*
/// environment variables (nested keys with `__`, e.g. ECHOMESH_ECHO__SEEN_TTL_SECS=300),
/// then flags.
#[derive(Parser, Debug)]
#[command(
    name = "echomesh-node",
    version,
    after_help = "Examples:\n  echomesh-node\n  echomesh-node --data-dir /var/lib/echomesh --listen 0.0.0.0:4710 --advertise node-a.example.org:4710\n  echomesh-node --neighbor 10.0.0.2:4710#<64-hex fingerprint>\n  echomesh-node --bridge-listen 0.0.0.0:4710 --bridge-neighbor echo+tls://10.0.0.9:5710\n  echomesh-node --print-config > echomesh.toml"
)]
struct Args {
    /// TOML configuration file.
    #[arg(long, env = "ECHOMESH_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory (identity, admin token, database).
    #[arg(long, value_name = "DIR")]
    data_dir: Option<PathBuf>,
    /// UDP address for QUIC.
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// Address other nodes dial, written into invite tokens (HOST:PORT).
    #[arg(long, value_name = "HOST:PORT")]
    advertise: Option<String>,
    /// Admin HTTP API address.
    #[arg(long, value_name = "ADDR")]
    admin: Option<SocketAddr>,
    /// Cluster name (the ozone replication group).
    #[arg(long, value_name = "NAME")]
    cluster: Option<String>,
    /// Static neighbor HOST:PORT#FINGERPRINT (repeatable; append @half for half echo).
    #[arg(long = "neighbor", value_name = "HOST:PORT#FINGERPRINT")]
    neighbors: Vec<String>,
    /// Serve Echo clients (Smoke, Spot-On) and Spot-On-Lite daemons on this TCP address, TLS
    /// 1.2/1.3 with a certificate made on first start and kept (docs/ECHO.md). Off by default.
    #[arg(long, value_name = "ADDR")]
    bridge_listen: Option<SocketAddr>,
    /// Make the Echo listener plain TCP instead of TLS.
    #[arg(long)]
    bridge_plain: bool,
    /// Outgoing Echo link to a Spot-On-Lite or Spot-On listener (repeatable):
    /// echo+tls://HOST:PORT?cert-sha256=HEX, echo+tls://HOST:PORT (pinned on first use) or
    /// echo+tcp://HOST:PORT.
    #[arg(long = "bridge-neighbor", value_name = "URL")]
    bridge_neighbors: Vec<String>,
    /// How new packets go to neighbors: flood (every packet over every link) or lazy (over a
    /// spanning tree per origin, packet IDs only on the other links; docs/BROADCAST.md).
    /// Sets echo.broadcast.
    #[arg(long, value_name = "flood|lazy")]
    broadcast: Option<echomesh_proto::broadcast::Mode>,
    /// Print the effective configuration as TOML and exit.
    #[arg(long)]
    print_config: bool,
    /// Print the catalogue of exported metrics (the table in docs/METRICS.md) and exit.
    #[arg(long)]
    print_metrics: bool,
    /// Create the data directory, identity and admin token if missing, print the node's
    /// fingerprint and exit (to pin a node before its first start, e.g. in GitOps).
    #[arg(long)]
    init: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.print_metrics {
        print!(
            "{}",
            echomesh_node::metrics::Metrics::new().catalogue_markdown()
        );
        return ExitCode::SUCCESS;
    }
    let overrides = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        admin: args.admin,
        cluster: args.cluster,
        advertise: args.advertise,
        neighbors: args.neighbors,
        bridge: echomesh_node::config::BridgeOverrides {
            listen: args.bridge_listen,
            plain: args.bridge_plain.then_some(true),
            neighbors: args.bridge_neighbors,
        },
        echo: echomesh_node::config::EchoOverrides {
            broadcast: args.broadcast,
        },
    };
    let cfg = match Config::load(args.config.as_deref(), &overrides) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echomesh-node: {e}");
            return ExitCode::from(2);
        }
    };
    if args.print_config {
        print!("{}", cfg.to_toml());
        return ExitCode::SUCCESS;
    }
    if args.init {
        return match echomesh_node::node::init_data_dir(&cfg.data_dir) {
            Ok((identity, _)) => {
                let id = identity.id;
                println!("id           {}", id.short());
                println!("fingerprint  {}", id.fingerprint());
                println!("data dir     {}", cfg.data_dir.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("echomesh-node: {e:#}");
                ExitCode::FAILURE
            }
        };
    }
    // The node ID names this process in exported traces (`service.instance.id`).
    let instance = echomesh_node::node::init_data_dir(&cfg.data_dir)
        .ok()
        .map(|(identity, _)| identity.id.short());
    let traces = match echomesh_node::telemetry::init(&cfg.log, &cfg.telemetry, instance) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("echomesh-node: {e:#}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echomesh-node: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let source = echomesh_node::reload::ReloadSource {
        file: args.config.clone(),
        overrides: overrides.clone(),
    };
    // Human logs already go to stderr: say a fatal error once. JSON logs get it as a record
    // (for the log collector) and stderr as a line (for the person).
    let json_logs = cfg.log.format == "json";
    let code = match rt.block_on(run(cfg, source)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json_logs {
                tracing::error!("{e:#}");
            }
            eprintln!("echomesh-node: {e:#}");
            ExitCode::FAILURE
        }
    };
    drop(rt);
    traces.shutdown();
    code
}

async fn run(cfg: Config, source: echomesh_node::reload::ReloadSource) -> anyhow::Result<()> {
    let node = echomesh_node::start(cfg).await?;
    *node
        .ctx
        .live
        .source
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = Some(source);
    #[cfg(unix)]
    {
        // SIGHUP: reload the configuration (same file and flags).
        let ctx = node.ctx.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            let Ok(mut hup) = signal(SignalKind::hangup()) else {
                tracing::warn!("cannot install SIGHUP handler; use `echomeshctl reload`");
                return;
            };
            while hup.recv().await.is_some() {
                if let Err(e) = echomesh_node::reload::reload(&ctx).await {
                    tracing::error!("SIGHUP: {e}");
                }
            }
        });
    }
    let ctx = node.ctx.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        // Drain first (hand off ozones, flush queues), bounded by the deadline; a second
        // signal stops at once.
        let deadline = std::time::Duration::from_secs(ctx.cfg.drain_deadline_secs);
        tracing::info!(
            deadline_secs = deadline.as_secs(),
            "stop signal: draining before exit (send it again to stop at once)"
        );
        echomesh_node::drain::start(&ctx, deadline);
        let finished = async {
            loop {
                let st = ctx.drain.status();
                if matches!(st.phase, Phase::Done | Phase::TimedOut) {
                    return st;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        };
        tokio::select! {
            st = finished => {
                if st.safe_to_stop {
                    tracing::info!("drained; shutting down");
                } else {
                    tracing::warn!(detail = ?st.detail, "drain incomplete at the deadline; shutting down anyway");
                }
            }
            _ = wait_for_signal() => tracing::warn!(status = ?ctx.drain.status(), "second stop signal: shutting down now"),
        }
        ctx.shutdown.cancel();
    });
    node.wait().await;
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "cannot install SIGTERM handler; use SIGINT");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
