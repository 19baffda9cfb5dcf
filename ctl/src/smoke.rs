//! `echomeshctl smoke`: the cluster's SmokeStack services for Smoke users (docs/ECHO.md) — the
//! ozones Smoke clients store messages through, the participants, and private-server mode.
//! Any node's admin API changes the whole cluster's configuration.

use clap::Subcommand;
use echomesh_proto::admin as api;

use crate::admin_client::AdminClient;

#[derive(Debug, Subcommand)]
pub enum SmokeCommand {
    /// Smoke ozones: the addresses Smoke users "initialize an ozone" with (usually this
    /// server's `HOST:PORT:TCP`). Messages for offline participants are stored only through
    /// a configured ozone.
    #[command(subcommand)]
    Ozones(OzoneCommand),
    /// Smoke participants (SipHash IDs). They register themselves with Smoke's "share
    /// SipHash ID"; their keys are captured when they share them (EPKS).
    #[command(subcommand)]
    Participants(ParticipantCommand),
    /// Private-server mode: Smoke clients must log in (0097a/0097b) with the key of a
    /// registered participant before anything they send is taken.
    PrivateServer {
        #[arg(value_parser = ["on", "off"])]
        state: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum OzoneCommand {
    /// Add an ozone address, e.g. `echomeshctl smoke ozones add 203.0.113.7:4710:TCP`.
    Add { address: String },
    /// Remove an ozone address (stored messages stay until read or expired).
    Remove { address: String },
    /// List the cluster's ozones.
    List,
}

#[derive(Debug, Subcommand)]
pub enum ParticipantCommand {
    /// List participants, whether their keys were captured, and since when.
    List,
    /// Register a participant by SipHash ID (Smoke users can also register themselves).
    Add { siphash_id: String },
    /// Remove a participant (its keys are forgotten; it can register again).
    Remove { siphash_id: String },
}

pub async fn run(client: AdminClient, cmd: SmokeCommand, json: bool) -> anyhow::Result<()> {
    match cmd {
        SmokeCommand::Ozones(c) => {
            let view: api::SmokeOzones = match c {
                OzoneCommand::List => client.get(api::PATH_SMOKE_OZONES).await?,
                OzoneCommand::Add { address } => {
                    client
                        .post(api::PATH_SMOKE_OZONES, &api::SmokeOzoneChange { address })
                        .await?
                }
                OzoneCommand::Remove { address } => {
                    client
                        .delete_with(api::PATH_SMOKE_OZONES, &api::SmokeOzoneChange { address })
                        .await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "{} Smoke ozone(s) (at most {})",
                    view.ozones.len(),
                    view.max
                );
                for o in &view.ozones {
                    println!("  {o}");
                }
            }
        }
        SmokeCommand::Participants(c) => {
            let view: api::SmokeParticipants = match c {
                ParticipantCommand::List => client.get(api::PATH_SMOKE_PARTICIPANTS).await?,
                ParticipantCommand::Add { siphash_id } => {
                    client
                        .post(
                            api::PATH_SMOKE_PARTICIPANTS,
                            &api::SmokeParticipantChange { siphash_id },
                        )
                        .await?
                }
                ParticipantCommand::Remove { siphash_id } => {
                    client
                        .delete_with(
                            api::PATH_SMOKE_PARTICIPANTS,
                            &api::SmokeParticipantChange { siphash_id },
                        )
                        .await?
                }
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&view)?);
            } else {
                println!(
                    "{} Smoke participant(s) (at most {})",
                    view.participants.len(),
                    view.max
                );
                println!("{:<41} {:<6} SINCE", "SIPHASH ID", "KEYS");
                for p in &view.participants {
                    let keys = p.algorithm.as_deref().unwrap_or("-");
                    let since = jiff::Timestamp::from_millisecond(p.since_unix_ms as i64)
                        .map(|t| t.to_string())
                        .unwrap_or_default();
                    println!("{:<41} {:<6} {since}", p.siphash_id, keys);
                }
            }
        }
        SmokeCommand::PrivateServer { state } => {
            let r: api::SmokePrivateServer = client
                .put(
                    api::PATH_SMOKE_PRIVATE_SERVER,
                    &api::SmokePrivateServer { on: state == "on" },
                )
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!(
                    "private server: {}",
                    if r.on {
                        "on (Smoke clients must log in)"
                    } else {
                        "off"
                    }
                );
            }
        }
    }
    Ok(())
}
