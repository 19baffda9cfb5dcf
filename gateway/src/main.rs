//! `echomesh-gateway`: the HTTP gateway between the city's software and the mesh.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use echomesh_gateway::config::{Config, Overrides};
use echomesh_gateway::tokens::TokenFile;
use echomesh_gateway::Gateway;

/// echomesh gateway: the city's own software (ticket systems, case management, timetables)
/// sends and receives end-to-end encrypted echomesh messages over HTTP, as service identities
/// such as `ordnungsamt` or `hausmeister-dienst`. Incoming messages go to a webhook (signed as
/// Standard Webhooks says) or wait to be pulled. Nodes never see plaintext.
///
/// First start: creates each --identity's key in DATA_DIR/identities (back these up: they are
/// the city's service addresses) and an API token with every scope in DATA_DIR/api.token.
/// Settings: defaults, then --config FILE, then ECHOMESH_GATEWAY_* variables (nested keys with
/// `__`), then flags. docs/GATEWAY.md has walkthroughs.
#[derive(Parser, Debug)]
#[command(
    name = "echomesh-gateway",
    version,
    after_help = "Examples:\n  echomesh-gateway --node 10.0.0.1:4710#<fingerprint> --identity ordnungsamt \\\n      --webhook http://127.0.0.1:8080/echomesh --webhook-secret-file /etc/echomesh/webhook.secret\n  echomesh-gateway token create --name tickets --scope send:hausmeister-dienst\n  echomesh-gateway openapi > openapi.json"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TOML configuration file.
    #[arg(
        long,
        env = "ECHOMESH_GATEWAY_CONFIG",
        value_name = "FILE",
        global = true
    )]
    config: Option<PathBuf>,
    /// Data directory (identity keys, API tokens, database) [default: ./echomesh-gateway-data].
    #[arg(long, value_name = "DIR", global = true)]
    data_dir: Option<PathBuf>,
    /// HTTP API address [default: 127.0.0.1:4712].
    #[arg(long, value_name = "ADDR")]
    listen: Option<SocketAddr>,
    /// A node to use (repeatable; tried in order when one fails). With #FINGERPRINT the node
    /// is pinned; without, its fingerprint is trusted on first use and recorded in
    /// DATA_DIR/known_nodes.
    #[arg(long = "node", value_name = "HOST:PORT[#FP]")]
    nodes: Vec<String>,
    /// A service identity to hold (repeatable; created on first start).
    #[arg(long = "identity", value_name = "NAME")]
    identities: Vec<String>,
    /// Deliver incoming messages to this URL (without it: pull them from GET /v1/inbox).
    #[arg(long, value_name = "URL")]
    webhook: Option<String>,
    /// File holding the webhook signing secret (repeat once while rotating: both sign).
    #[arg(long = "webhook-secret-file", value_name = "FILE")]
    webhook_secret_files: Vec<PathBuf>,
    /// Print the catalogue of exported metrics (the table in docs/GATEWAY.md) and exit.
    #[arg(long)]
    print_metrics: bool,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Create, list or revoke API tokens (works while the gateway runs; changes apply within
    /// a second).
    Token {
        #[command(subcommand)]
        cmd: TokenCmd,
    },
    /// Print the OpenAPI document and exit.
    Openapi,
}

#[derive(Subcommand, Debug)]
enum TokenCmd {
    /// Create a token for one calling application; prints it once (only its hash is kept).
    Create {
        /// Which application holds it (e.g. tickets, sap-ordnungsamt).
        #[arg(long)]
        name: String,
        /// send:IDENTITY or read:IDENTITY (IDENTITY may be *); repeatable.
        #[arg(long = "scope", required = true)]
        scopes: Vec<String>,
    },
    /// List tokens (names and scopes; never the secrets).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Revoke a token by name.
    Revoke { name: String },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("echomesh-gateway: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: Args) -> anyhow::Result<ExitCode> {
    if args.print_metrics {
        print!(
            "{}",
            echomesh_gateway::metrics::Metrics::new().catalogue_markdown()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let o = Overrides {
        data_dir: args.data_dir,
        listen: args.listen,
        nodes: args.nodes,
        identities: args.identities,
        webhook_url: args.webhook,
        webhook_secret_files: args.webhook_secret_files,
    };
    match args.command {
        Some(Command::Openapi) => {
            println!("{}", echomesh_gateway::api::openapi_json());
            Ok(ExitCode::SUCCESS)
        }
        Some(Command::Token { cmd }) => {
            let cfg = Config::load(args.config.as_deref(), &o)?;
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("creating {}", cfg.data_dir.display()))?;
            let f = TokenFile::in_dir(&cfg.data_dir);
            match cmd {
                TokenCmd::Create { name, scopes } => {
                    let t = f.create(&name, &scopes)?;
                    println!("{t}");
                    eprintln!("token {name:?} created with scopes {}; it is shown only now: store it with the application", scopes.join(", "));
                }
                TokenCmd::List { json } => {
                    let all = f.load()?;
                    if json {
                        println!("{}", serde_json::to_string_pretty(&all.iter().map(|e| serde_json::json!({"name": e.name, "scopes": e.scopes, "created_at": e.created_at})).collect::<Vec<_>>())?);
                    } else {
                        for e in all {
                            println!("{:<24} {}", e.name, e.scopes.join(" "));
                        }
                    }
                }
                TokenCmd::Revoke { name } => {
                    f.revoke(&name)?;
                    eprintln!("token {name:?} revoked (a running gateway stops accepting it within a second)");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        None => {
            let cfg = Config::load(args.config.as_deref(), &o)?;
            init_logging(&cfg.log_format);
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()?;
            rt.block_on(serve(cfg))?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn init_logging(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("ECHOMESH_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        b.json().init();
    } else {
        b.init();
    }
}

async fn serve(cfg: Config) -> anyhow::Result<()> {
    let shutdown = tokio_util::sync::CancellationToken::new();
    let listen = cfg.listen;
    if cfg.identities.is_empty() {
        tracing::warn!(
            "no identity configured (--identity NAME): the gateway can neither send nor receive"
        );
    }
    if cfg.webhook.url.is_none() {
        tracing::info!("no webhook configured: incoming messages wait for GET /v1/inbox");
    }
    let gw = Gateway::open(cfg, shutdown.clone()).await?;
    for i in &gw.identities {
        tracing::info!(identity = %i.name, id = %i.short_id, fingerprint = %i.fingerprint.hex(), "service identity");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("cannot listen on {listen} (in use? try --listen)"))?;
    tracing::info!(addr = %listen, "HTTP API listening");
    let mut tasks = gw.start();
    let app = echomesh_gateway::api::router(gw.clone());
    let stop = shutdown.clone();
    let server = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
    });
    wait_for_signal().await;
    tracing::info!("stopping");
    shutdown.cancel();
    let _ = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let _ = server.await;
        while tasks.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
