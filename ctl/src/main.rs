//! `echomeshctl`: operations CLI and reference client for echomesh.

mod admin_client;
mod bench;
mod bench_clients;
mod bench_ozone;
mod bench_smoke;
mod commands;
mod local_mesh;
mod messaging;
mod render;
mod sim;
mod smoke;
mod target_node;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::target_node::NodeTarget;

/// Operate echomesh nodes (status, neighbors, invite/join) and talk to them as a client
/// (keys, send, recv; inject and tail for testing). Admin commands use the node's admin API;
/// client commands dial the node's QUIC port given with --node.
#[derive(Parser, Debug)]
#[command(
    name = "echomeshctl",
    version,
    after_help = "Examples:\n  echomeshctl status\n  echomeshctl invite                      # on node A: prints a one-time token\n  echomeshctl join EM1-...                # on node B: B and A pin each other\n  echomeshctl neighbors --json\n  echomeshctl topology --dot | dot -Tsvg > mesh.svg\n  echomeshctl drain --wait && systemctl stop echomesh\n  echomeshctl tail --node 127.0.0.1:4710#<fingerprint> --count 1\n  echomeshctl inject --node 127.0.0.1:4710#<fingerprint> hello\n  echomeshctl keys gen --out alice.key\n  echomeshctl keys publish --node 127.0.0.1:4710 --key alice.key --name Alice\n  echomeshctl send --node 127.0.0.1:4710 --key alice.key --to M8N22HT6QK \"hello\"\n  echomeshctl recv --node 127.0.0.1:4710 --key bob.key --follow\n  echomeshctl bench --nodes 5 --packets 100000 --size 128"
)]
pub struct Cli {
    /// Admin API of the node to operate.
    #[arg(
        long,
        global = true,
        env = "ECHOMESH_ADMIN_URL",
        default_value = "http://127.0.0.1:4711"
    )]
    admin: String,
    /// File holding the admin bearer token.
    #[arg(
        long,
        global = true,
        env = "ECHOMESH_TOKEN_FILE",
        default_value = "./echomesh-data/admin.token"
    )]
    token_file: PathBuf,
    /// Machine-readable JSON output.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Node identity, version, readiness and counts.
    Status,
    /// The node's neighbors with state, mode and RTT; `add`, `remove`, `set-mode` change them.
    Neighbors {
        #[command(subcommand)]
        action: Option<NeighborsCmd>,
    },
    /// Print a one-time invite token for another node to `join` (default validity 15 min).
    Invite {
        /// Validity in seconds.
        #[arg(long)]
        ttl: Option<u64>,
    },
    /// Use an invite token from another node: both nodes pin each other and start peering.
    Join {
        /// The token printed by `echomeshctl invite` on the other node.
        token: String,
    },
    /// Show this tool's version and the node's.
    Version,
    /// Exit 0 when the node answers /healthz (with --ready: /readyz, i.e. serving and not
    /// draining), else 1. No token needed: for container healthchecks and scripts.
    Health {
        /// Check /readyz (serving, not draining, storage open) instead of /healthz.
        #[arg(long)]
        ready: bool,
    },
    /// The mesh as this node knows it: nodes (up, draining, left, failed), clusters and links
    /// with RTT, learned from signed node announcements. `--json` for tools, `--dot` for
    /// Graphviz (`echomeshctl topology --dot | dot -Tsvg > mesh.svg`).
    Topology {
        /// Print Graphviz DOT instead of tables.
        #[arg(long)]
        dot: bool,
    },
    /// The neighbors as members of the mesh, as this node's failure detector sees them: alive,
    /// suspect (no heartbeat for peer.suspect_ms: no clients are sent there), draining, left,
    /// or failed (no heartbeat for peer.fail_ms, or no connection: no ozone copies go there),
    /// since when, and how often each was suspected or failed. `--json` for tools.
    Members,
    /// SmokeStack services for Smoke users, for the whole cluster: ozones, participants,
    /// private-server mode (docs/ECHO.md). `echomeshctl smoke ozones add 203.0.113.7:4710:TCP`.
    #[command(subcommand)]
    Smoke(smoke::SmokeCommand),
    /// Take the node out of service without loss: not ready, neighbors told, clients moved to
    /// other nodes (spread over drain_client_grace_secs), ozones handed to their other owners,
    /// queues flushed, neighbors told it left. `--wait` shows progress and exits 0 when it is
    /// safe to stop the node (1 if the deadline passed first).
    Drain {
        /// Show progress until it is safe to stop the node (exit 1 if the deadline passes).
        #[arg(long)]
        wait: bool,
        /// Give up handing off after SECS (default: the node's drain_deadline_secs).
        #[arg(long)]
        deadline: Option<u64>,
    },
    /// Serve again after a drain.
    Undrain,
    /// Log in to the node's web console: prints a one-time login URL (valid 2 minutes, once)
    /// on its last line, and opens it in a browser when there is one and stdout is a
    /// terminal. For a node on another host, forward the admin port first:
    /// `ssh -L 4711:127.0.0.1:4711 HOST`, then run this with `--admin http://127.0.0.1:4711`.
    Console {
        /// Only print the URL, never start a browser.
        #[arg(long)]
        no_browser: bool,
    },
    /// Re-read the node's configuration (same as SIGHUP): static neighbors, neighbor rate
    /// limit and log level apply at once; what needs a restart is listed. An invalid file is
    /// refused and the running configuration stays.
    Reload,
    /// Inject raw echo packets (testing). Without PAYLOAD, random payloads of --size bytes;
    /// with PAYLOAD, exactly that payload, --count times (repeats are duplicates).
    Inject {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// How many packets to inject.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Bytes of each random payload (ignored with PAYLOAD).
        #[arg(long, default_value_t = 64)]
        size: usize,
        /// Hops each packet may travel (the node caps it at its echo.default_hops).
        #[arg(long, default_value_t = 16)]
        hops: u8,
        /// The payload text; without it, random bytes.
        payload: Option<String>,
    },
    /// Print packets the node accepts, one per line (UTF-8 if printable, else hex).
    Tail {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// Exit after N packets (exit 1 if --timeout passes first).
        #[arg(long)]
        count: Option<u64>,
        /// Stop after SECS seconds.
        #[arg(long)]
        timeout: Option<f64>,
        /// Print the Echo frames crossing the mesh (Smoke, Spot-On, Spot-On-Lite traffic of
        /// the bridge) instead of echomesh packets; plain `tail` never shows them.
        #[arg(long)]
        echo_frames: bool,
    },
    /// Participant keys: generate, publish, look up, revoke.
    #[command(subcommand)]
    Keys(messaging::KeysCmd),
    /// Send an end-to-end encrypted message or file to one or more participants.
    Send(messaging::SendArgs),
    /// Receive, decrypt and verify messages sent to your key.
    Recv(messaging::RecvArgs),
    /// Ozones (offline mailboxes): info and quotas.
    #[command(subcommand)]
    Ozone(messaging::OzoneCmd),
    /// Local mesh flood benchmark: N echomesh-node processes over real QUIC on 127.0.0.1.
    Bench(bench::BenchArgs),
    /// Simulate a mesh of N nodes in this process (seeded, deterministic): delivery,
    /// duplicates, hops, latency and bytes for flooding and lazy push, under loss, crashes and
    /// a partition. No node needed.
    Sim(sim::SimArgs),
}

#[derive(Subcommand, Debug)]
pub enum NeighborsCmd {
    /// Pin a neighbor and dial it (kept across restarts). The other node must pin this one
    /// too (its own `neighbors add`, or use invite/join which does both). An Echo address
    /// adds a link to a Spot-On-Lite or Spot-On listener instead (docs/ECHO.md).
    Add {
        /// `HOST:PORT#FINGERPRINT`, optionally ending in `@half`; or
        /// `echo+tls://HOST:PORT?cert-sha256=HEX` (pinned), `echo+tls://HOST:PORT` (pinned on
        /// first use) or `echo+tcp://HOST:PORT` (plain TCP).
        spec: String,
    },
    /// Unpin a neighbor (joined or added here) and close its connections; or remove an Echo
    /// link added here (by its `echo-…` ID).
    Remove {
        /// Fingerprint or short ID, as `neighbors` lists them (`echo-…` for Echo links).
        id: String,
    },
    /// Change how packets from a neighbor are treated: `full` (forward) or `half` (deliver
    /// locally only). Applies at once, without reconnecting.
    SetMode {
        /// Fingerprint or short ID, as `neighbors` lists them.
        id: String,
        /// `full` or `half`.
        mode: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("echomeshctl: cannot start runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(commands::run(cli)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("echomeshctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
