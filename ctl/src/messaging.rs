//! The person-to-person commands: `keys gen|publish|lookup|revoke|show`, `send`, `recv`.

use std::io::{IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use echomesh_client::e2e::{self, Content, Participant};
use echomesh_client::files::{self, Reassembler};
use echomesh_client::{keyfile, mail};
use echomesh_client::{ClientReader, ClientSession, Followed, Follower};
use echomesh_proto::clock::unix_now;
use echomesh_proto::echo::EchoPacket;
use echomesh_proto::keydir::{BundleKind, Fingerprint, KeyBundle, ParticipantRef};
use echomesh_proto::ozone::OzoneProof;
use echomesh_proto::tags;
use echomesh_proto::wire::{ClientEvent, ClientRequest, MsgId, Position, SubscribeFilter};
use std::collections::HashSet;

use crate::target_node::{self, NodeTarget};

/// Passphrase environment variable (also read by every command that opens a key file).
const PASSPHRASE_ENV: &str = "ECHOMESH_PASSPHRASE";

#[derive(Subcommand, Debug)]
pub enum KeysCmd {
    /// Generate an RSA-3072 participant key into a new file (mode 0600). The passphrase comes
    /// from ECHOMESH_PASSPHRASE or a prompt; --no-passphrase stores the key unprotected.
    Gen {
        /// The new key file (refused if it exists; written with mode 0600).
        #[arg(long)]
        out: PathBuf,
        /// Store the key without a passphrase (anyone who can read the file can read your mail).
        #[arg(long)]
        no_passphrase: bool,
    },
    /// Publish your signed key bundle so others can find you by your ID.
    Publish {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// Your key file.
        #[arg(long)]
        key: PathBuf,
        /// Display name shown to people who look you up (default: $USER).
        #[arg(long)]
        name: Option<String>,
        /// Publish without your personal mailbox: then messages reach you only while your
        /// client is connected (by default the bundle names it, and messages sent while you
        /// are offline wait there, replicated on the cluster).
        #[arg(long)]
        no_mailbox: bool,
    },
    /// Look up a participant by short ID (e.g. M8N22HT6QK) or full fingerprint.
    Lookup {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// Short ID (e.g. M8N22HT6QK) or full fingerprint.
        id: String,
    },
    /// Revoke your key: a signed, final notice that it must not be used any more.
    Revoke {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// The key file of the key to revoke.
        #[arg(long)]
        key: PathBuf,
    },
    /// Show the ID and fingerprint of a key file.
    Show {
        /// The key file.
        #[arg(long)]
        key: PathBuf,
    },
}

#[derive(Subcommand, Debug)]
pub enum OzoneCmd {
    /// Messages and bytes held, quotas, retention and which members hold the ozone.
    Info {
        /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
        /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
        #[arg(long)]
        node: NodeTarget,
        /// The ozone's secret.
        #[arg(long, env = "ECHOMESH_OZONE_SECRET", hide_env_values = true)]
        secret: String,
    },
}

pub async fn ozone(cmd: OzoneCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        OzoneCmd::Info { node, secret } => {
            let (_ep, mut s) = target_node::connect(&node).await?;
            let i = s
                .ozone_info(OzoneProof::from_secret(secret.as_bytes()))
                .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&i)?);
            } else {
                println!(
                    "messages     {} of {} ({} of {}) on {}",
                    i.messages,
                    i.max_messages,
                    crate::render::bytes(i.bytes),
                    crate::render::bytes(i.max_bytes),
                    node.addr
                );
                println!("retention    {}", crate::render::duration(i.retention_secs));
                println!(
                    "replicas     R={} W={} (cluster: {} of {} members alive)",
                    i.replicas, i.write_quorum, i.members_alive, i.members_known
                );
                println!("owners       {}", i.owners.join(", "));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Args, Debug)]
pub struct SendArgs {
    /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
    /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
    #[arg(long)]
    node: NodeTarget,
    /// Your key file.
    #[arg(long)]
    key: PathBuf,
    /// Recipients: short IDs or fingerprints, comma-separated (one encrypted copy each).
    #[arg(long, value_delimiter = ',', required = true)]
    to: Vec<String>,
    /// Deposit into the ozone (offline mailbox) derived from SECRET instead of sending live;
    /// exits 0 only once every piece is durable on the cluster's write quorum.
    #[arg(
        long,
        value_name = "SECRET",
        env = "ECHOMESH_OZONE_SECRET",
        hide_env_values = true
    )]
    ozone: Option<String>,
    /// Send a file (a picture, a document) instead of a text message.
    #[arg(long, conflicts_with = "message")]
    file: Option<PathBuf>,
    /// The text to send.
    #[arg(required_unless_present = "file")]
    message: Option<String>,
}

#[derive(Args, Debug)]
pub struct RecvArgs {
    /// The node to talk to: HOST:PORT#FINGERPRINT (pinned; `echomeshctl status` on that
    /// node prints it), or HOST:PORT (trust on first use: remembered, then checked).
    #[arg(long)]
    node: NodeTarget,
    /// Read the ozone derived from SECRET instead of your personal mailbox: stored messages
    /// first, oldest first, each acknowledged (deleted) once shown; then live with --follow.
    /// Without it, `recv` reads your mailbox (messages sent while you were offline) the same
    /// way, then listens live.
    #[arg(
        long,
        value_name = "SECRET",
        env = "ECHOMESH_OZONE_SECRET",
        hide_env_values = true
    )]
    ozone: Option<String>,
    /// Your key file.
    #[arg(long)]
    key: PathBuf,
    /// Keep listening until interrupted (or --timeout).
    #[arg(long)]
    follow: bool,
    /// Stop listening after SECS seconds (default without --follow: 30; not used by
    /// `--ozone` without --follow, which ends when the ozone is read).
    #[arg(long)]
    timeout: Option<f64>,
    /// Exit after N messages (exit 1 if the timeout comes first).
    #[arg(long)]
    count: Option<u64>,
    /// Where received files are written.
    #[arg(long, default_value = ".")]
    out_dir: PathBuf,
    /// Largest file accepted, in bytes.
    #[arg(long, default_value_t = files::DEFAULT_MAX_FILE_BYTES)]
    max_file_bytes: u64,
}

fn passphrase_for(path: &Path) -> anyhow::Result<Option<String>> {
    if !keyfile::is_protected(path)? {
        return Ok(None);
    }
    if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
        return Ok(Some(p));
    }
    if std::io::stdin().is_terminal() {
        let p = rpassword::prompt_password(format!("passphrase for {}: ", path.display()))
            .context("reading passphrase")?;
        return Ok(Some(p));
    }
    Ok(None)
}

fn load_key(path: &Path) -> anyhow::Result<Participant> {
    let pass = passphrase_for(path)?;
    Ok(keyfile::load(path, pass.as_deref())?)
}

pub async fn keys(cmd: KeysCmd, json: bool) -> anyhow::Result<ExitCode> {
    match cmd {
        KeysCmd::Gen { out, no_passphrase } => {
            if out.exists() {
                bail!(keyfile::KeyFileError::Exists(out.display().to_string()));
            }
            let pass = if no_passphrase {
                None
            } else if let Ok(p) = std::env::var(PASSPHRASE_ENV) {
                Some(p)
            } else if std::io::stdin().is_terminal() {
                let a = rpassword::prompt_password("new passphrase: ")?;
                let b = rpassword::prompt_password("again: ")?;
                if a != b {
                    bail!("the two passphrases differ; nothing written");
                }
                Some(a)
            } else {
                bail!("no passphrase: set {PASSPHRASE_ENV}, run in a terminal, or pass --no-passphrase to store the key unprotected");
            };
            if pass.as_deref() == Some("") {
                bail!("empty passphrase: use --no-passphrase if you mean an unprotected key");
            }
            let who = tokio::task::spawn_blocking(Participant::generate).await??;
            keyfile::save(&out, &who, pass.as_deref())?;
            let fp = who.fingerprint();
            if json {
                println!(
                    "{}",
                    serde_json::json!({"id": fp.short_id().to_string(), "fingerprint": fp.hex(),
                        "file": out.display().to_string(), "protected": pass.is_some()})
                );
            } else {
                println!("id           {}", fp.short_id());
                println!("fingerprint  {}", fp.hex());
                println!(
                    "key written to {} ({})",
                    out.display(),
                    if pass.is_some() {
                        "protected by your passphrase"
                    } else {
                        "NOT protected: keep the file private"
                    }
                );
                println!(
                    "next: echomeshctl keys publish --node HOST:PORT --key {}",
                    out.display()
                );
            }
        }
        KeysCmd::Show { key } => {
            let who = load_key(&key)?;
            print_id(&who.fingerprint(), json, serde_json::json!({}));
        }
        KeysCmd::Publish {
            node,
            key,
            name,
            no_mailbox,
        } => {
            let who = load_key(&key)?;
            let name = name
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "anonymous".into());
            publish(&node, &who, BundleKind::Publish, &name, !no_mailbox, json).await?;
        }
        KeysCmd::Revoke { node, key } => {
            let who = load_key(&key)?;
            publish(&node, &who, BundleKind::Revoke, "revoked", false, json).await?;
        }
        KeysCmd::Lookup { node, id } => {
            let who: ParticipantRef = id.parse()?;
            let (_ep, mut s) = target_node::connect(&node).await?;
            let found = mail::verified_bundles(&mut s, who).await?;
            if found.is_empty() {
                bail!("no key published for {who} is known to {}; ask them to run `echomeshctl keys publish`", node.addr);
            }
            if json {
                let v: Vec<_> = found.iter().map(bundle_json).collect();
                if v.len() == 1 {
                    println!("{}", v[0]);
                } else {
                    println!("{}", serde_json::Value::Array(v));
                }
            } else {
                if found.len() > 1 {
                    eprintln!("warning: {} keys share the short ID {who}; compare fingerprints with the person", found.len());
                }
                for b in &found {
                    let fp = b.fingerprint();
                    println!("id           {}", fp.short_id());
                    println!("fingerprint  {}", fp.hex());
                    println!("name         {}", sanitize(&b.display_name));
                    println!("created      {}", crate::render::local_time(b.created_at));
                    println!("status       {} (signature verified)", b.kind.label());
                    println!(
                        "mailbox      {}",
                        if b.mailbox.is_some() {
                            "yes: messages wait there while they are offline"
                        } else {
                            "no: reachable only while connected"
                        }
                    );
                }
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_id(fp: &Fingerprint, json: bool, mut extra: serde_json::Value) {
    if json {
        extra["id"] = fp.short_id().to_string().into();
        extra["fingerprint"] = fp.hex().into();
        println!("{extra}");
    } else {
        println!("id           {}", fp.short_id());
        println!("fingerprint  {}", fp.hex());
    }
}

fn bundle_json(b: &KeyBundle) -> serde_json::Value {
    let fp = b.fingerprint();
    serde_json::json!({"id": fp.short_id().to_string(), "fingerprint": fp.hex(),
        "name": b.display_name, "created_at": b.created_at, "status": b.kind.label(),
        "mailbox": b.mailbox.is_some()})
}

async fn publish(
    node: &NodeTarget,
    who: &Participant,
    kind: BundleKind,
    name: &str,
    mailbox: bool,
    json: bool,
) -> anyhow::Result<()> {
    let bundle = who.bundle(kind, name, unix_now(), mailbox);
    let (_ep, mut s) = target_node::connect(node).await?;
    let changed = s
        .publish_key(bundle)
        .await
        .with_context(|| format!("publishing to {}", node.addr))?;
    let fp = who.fingerprint();
    if json {
        print_id(
            &fp,
            true,
            serde_json::json!({"changed": changed, "status": kind.label(), "mailbox": mailbox}),
        );
    } else {
        print_id(&fp, false, serde_json::json!({}));
        println!(
            "{} at {}{}",
            kind.label(),
            node.addr,
            if changed { "" } else { " (already there)" }
        );
        if kind == BundleKind::Publish {
            println!(
                "mailbox      {}",
                if mailbox {
                    "published: messages sent while you are offline wait for your next `recv`"
                } else {
                    "none: you receive messages only while `recv` runs"
                }
            );
        }
    }
    Ok(())
}

pub async fn send(a: SendArgs, json: bool) -> anyhow::Result<ExitCode> {
    let me = load_key(&a.key)?;
    let contents = match (&a.file, &a.message) {
        (Some(path), _) => {
            let data = tokio::fs::read(path)
                .await
                .with_context(|| format!("reading {}", path.display()))?;
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("file")
                .to_string();
            Some((name, data))
        }
        _ => None,
    };
    let (ep, mut s) = target_node::connect(&a.node).await?;
    let mut recipients = Vec::new();
    for t in &a.to {
        recipients.push(mail::resolve_recipient(&mut s, t).await?);
    }
    let content: Vec<Content> = match (&contents, &a.message) {
        (Some((name, data)), _) => {
            mail::contents(None, Some((name, data)), mail::chunk_size(s.max_payload))
        }
        (None, Some(text)) => mail::contents(Some(text), None, 0),
        (None, None) => bail!("nothing to send: give a MESSAGE or --file"),
    };
    let n_pieces = content.len();
    let mut live_packets = Vec::new();
    let mut outcomes = Vec::new();
    for r in &recipients {
        let pieces =
            tokio::task::block_in_place(|| mail::seal_pieces(&me, r, &content, s.max_payload))?;
        // An explicit --ozone wins; else the recipient's mailbox; else live only.
        let mailbox = match &a.ozone {
            Some(secret) => Some(OzoneProof::from_secret(secret.as_bytes()).address()),
            None => r.mailbox,
        };
        let outcome = match mailbox {
            Some(addr) => {
                // One deposit per piece, each acknowledged only once durable (W copies); the
                // node floods it live too, so a connected recipient sees it at once.
                let mut copies = u8::MAX;
                let mut failed = None;
                for p in pieces {
                    match mail::deposit_retrying(&ep, &mut s, addr, p, target_node::AGENT).await {
                        Ok(c) => copies = copies.min(c),
                        Err(e) => {
                            failed = Some(format!("{e:#}"));
                            break;
                        }
                    }
                }
                match failed {
                    None => Delivery::Queued { copies },
                    Some(why) => Delivery::Failed(why),
                }
            }
            None => {
                live_packets.extend(mail::live_packets(&r.fingerprint, pieces));
                Delivery::Live
            }
        };
        outcomes.push((r, outcome));
    }
    if !live_packets.is_empty() {
        let total = live_packets.len() as u64;
        let acknowledged = inject_all(&ep, s, live_packets).await?;
        if acknowledged < total {
            bail!(
                "the node rejected {} of {total} packets (too large for it?)",
                total - acknowledged
            );
        }
    } else {
        s.conn.close(0u32.into(), b"done");
    }
    target_node::hang_up(&ep).await;
    let all_ok = outcomes
        .iter()
        .all(|(_, o)| !matches!(o, Delivery::Failed(_)));
    if json {
        let to: Vec<_> = outcomes
            .iter()
            .map(|(r, o)| {
                let mut v = serde_json::json!({"id": r.fingerprint.short_id().to_string(),
                    "fingerprint": r.fingerprint.hex(), "delivery": o.label()});
                match o {
                    Delivery::Queued { copies } => v["copies"] = (*copies).into(),
                    Delivery::Failed(why) => v["error"] = why.clone().into(),
                    Delivery::Live => {}
                }
                v
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({"to": to, "pieces": n_pieces,
                "packets": n_pieces * outcomes.len(), "ok": all_ok})
        );
    } else {
        let pieces = if n_pieces > 1 {
            format!(" in {n_pieces} encrypted pieces")
        } else {
            String::new()
        };
        for (r, o) in &outcomes {
            let who = format!(
                "{} ({})",
                r.fingerprint.short_id(),
                sanitize(&r.display_name)
            );
            match o {
                Delivery::Queued { copies } if a.ozone.is_some() => {
                    println!("deposited (durable, {copies} copies) for {who}{pieces}")
                }
                Delivery::Queued { copies } => println!(
                    "queued for {who}{pieces}: durable in their mailbox ({copies} copies); delivered now if they are connected, else at their next recv"
                ),
                Delivery::Live => println!(
                    "live only: sent to {who}{pieces}; {} is reachable only while connected (no mailbox in their key bundle)",
                    sanitize(&r.display_name)
                ),
                Delivery::Failed(why) => {
                    eprintln!("NOT queued for {who}: {why}; nothing was acknowledged for them, send again")
                }
            }
        }
    }
    Ok(if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// What `send` achieved for one recipient.
enum Delivery {
    /// Durable in their mailbox (or the named ozone) on this many copies (≥ W).
    Queued {
        copies: u8,
    },
    /// Sent live: they get it only if connected now.
    Live,
    Failed(String),
}

impl Delivery {
    fn label(&self) -> &'static str {
        match self {
            Delivery::Queued { .. } => "queued",
            Delivery::Live => "live",
            Delivery::Failed(_) => "failed",
        }
    }
}

/// Inject packets in batches of about 1 MiB, again after a lost connection; returns how many
/// the node acknowledged (new or known).
async fn inject_all(
    ep: &quinn::Endpoint,
    s: ClientSession,
    packets: Vec<EchoPacket>,
) -> anyhow::Result<u64> {
    let batches = mail::batches(packets);
    let r = echomesh_client::inject::inject_all(
        ep,
        s,
        target_node::AGENT,
        batches.into_iter(),
        echomesh_client::follow::RESUME_FOR,
        |_, _, _| {},
    )
    .await
    .context("sending")?;
    Ok(r.accepted + r.duplicates)
}

/// Text for a terminal: control characters (escape sequences, newlines) are shown escaped.
fn sanitize(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if c.is_control() && c != '\t' {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}

pub async fn recv(a: RecvArgs, json: bool) -> anyhow::Result<ExitCode> {
    let me = load_key(&a.key)?;
    let fp = me.fingerprint();
    // Stored messages come from the named ozone, or by default from one's own mailbox (its
    // proof derives from the key); live ones also on the inbox tag (senders who found no
    // mailbox in an older bundle of ours send live only).
    let proof = match a.ozone.as_deref() {
        Some(secret) => OzoneProof::from_secret(secret.as_bytes()),
        None => me.mailbox(),
    };
    let mut addresses = vec![proof.address().0];
    if a.ozone.is_none() {
        addresses.push(tags::inbox_address(&fp));
    }
    let live_tags = |now: u64| -> Vec<[u8; 32]> {
        addresses
            .iter()
            .flat_map(|addr| tags::tags_around(addr, now))
            .collect()
    };
    let stored_tags = |now: u64| tags::tags_around(&proof.address().0, now);
    std::fs::create_dir_all(&a.out_dir)
        .with_context(|| format!("creating {}", a.out_dir.display()))?;
    let (ep, mut s) = target_node::connect(&a.node).await?;
    let (w, rd) = s.parts();
    let mut files = Reassembler::new(a.max_file_bytes);
    let mut shown = 0u64;
    let mut seen: HashSet<[u8; 32]> = HashSet::new();
    let live = a.ozone.is_none() || a.follow;
    // Deliveries that arrive while stored messages are fetched wait here.
    let mut buffered: Vec<EchoPacket> = Vec::new();
    let filter = SubscribeFilter::Tags(live_tags(unix_now()));
    if live {
        w.subscribe(filter.clone()).await?;
        wait_for(rd, &mut buffered, |ev| {
            matches!(ev, ClientEvent::Subscribed)
        })
        .await?;
    }
    {
        // Stored messages first, oldest first; each page acknowledged once shown.
        let mut after = None;
        loop {
            w.send_request(&ClientRequest::Fetch {
                addr: proof.address(),
                proof,
                after,
                limit: 128,
            })
            .await?;
            let (messages, more) = match wait_for(rd, &mut buffered, |ev| {
                matches!(ev, ClientEvent::Fetched { .. })
            })
            .await?
            {
                ClientEvent::Fetched { messages, more } => (messages, more),
                _ => unreachable!("wait_for returns the awaited event"),
            };
            let mut acks = Vec::new();
            for m in &messages {
                if a.count.is_some_and(|c| shown >= c) {
                    break;
                }
                after = Some(Position {
                    seq: m.seq,
                    id: MsgId(m.id),
                });
                if !seen.insert(m.id) {
                    continue;
                }
                let opened = tokio::task::block_in_place(|| e2e::open(&me, &m.payload));
                let r = show(opened, &mut files, &a.out_dir, json)?;
                shown += r.lines;
                if r.mine {
                    acks.push(MsgId(m.id));
                }
            }
            if !acks.is_empty() {
                w.send_request(&ClientRequest::Ack {
                    addr: proof.address(),
                    proof,
                    ids: acks,
                })
                .await?;
                wait_for(rd, &mut buffered, |ev| {
                    matches!(ev, ClientEvent::Acked { .. })
                })
                .await?;
            }
            if !more || a.count.is_some_and(|c| shown >= c) {
                break;
            }
        }
        if !live || a.count.is_some_and(|c| shown >= c) {
            s.conn.close(0u32.into(), b"done");
            target_node::hang_up(&ep).await;
            return Ok(ExitCode::SUCCESS);
        }
    }
    // Live: a follower moves to another node if this one drains, without loss or repeats.
    let mut f = Follower::new(ep.clone(), s, target_node::AGENT, Some(filter));
    eprintln!("recv: listening as {} on {}", fp.short_id(), a.node.addr);
    let timeout = a.timeout.or(if a.follow { None } else { Some(30.0) });
    let deadline =
        timeout.map(|t| tokio::time::Instant::now() + Duration::from_secs_f64(t.max(0.0)));
    let mut epoch = tags::epoch_of(unix_now());
    let mut resubscribe = tokio::time::interval(Duration::from_secs(30));
    // Live acknowledgements sent and not yet confirmed by the node.
    let mut pending_acks = 0usize;
    loop {
        for p in std::mem::take(&mut buffered) {
            if a.count.is_some_and(|c| shown >= c) {
                break;
            }
            if seen.len() > 100_000 {
                seen.clear();
            }
            if !seen.insert(p.id) {
                continue;
            }
            let opened = tokio::task::block_in_place(|| e2e::open(&me, &p.payload));
            let r = show(opened, &mut files, &a.out_dir, json)?;
            shown += r.lines;
            let stored = p.tag.is_some_and(|t| stored_tags(unix_now()).contains(&t));
            if r.mine && stored {
                // Live messages of an ozone are stored too: acknowledge them (answer ignored).
                f.writer()
                    .send_request(&ClientRequest::Ack {
                        addr: proof.address(),
                        proof,
                        ids: vec![MsgId(p.id)],
                    })
                    .await?;
                pending_acks += 1;
            }
        }
        if a.count.is_some_and(|c| shown >= c) {
            break;
        }
        let far = tokio::time::Instant::now() + Duration::from_secs(86_400 * 365);
        let ev = tokio::select! {
            _ = tokio::time::sleep_until(deadline.unwrap_or(far)) => {
                if let Some(c) = a.count {
                    eprintln!("echomeshctl: timeout after {shown} of {c} messages");
                    f.close();
                    target_node::hang_up(&ep).await;
                    return Ok(ExitCode::FAILURE);
                }
                break;
            }
            _ = resubscribe.tick() => {
                // Follow the tag epoch (the node confirms with `Subscribed`, skipped below).
                let now = tags::epoch_of(unix_now());
                if now != epoch {
                    epoch = now;
                    f.subscribe(SubscribeFilter::Tags(live_tags(unix_now()))).await?;
                }
                continue;
            }
            ev = f.next() => ev?,
        };
        let ev = match ev {
            Some(Followed::Moved { to, reason }) => {
                eprintln!("recv: moved to {to} ({reason})");
                continue;
            }
            Some(Followed::Event(ev)) => Some(ev),
            None => None,
        };
        match ev {
            Some(ClientEvent::Deliver(batch)) => buffered.extend(batch),
            Some(ClientEvent::Acked { .. }) => pending_acks = pending_acks.saturating_sub(1),
            Some(ClientEvent::Lagged { dropped }) => {
                eprintln!("echomeshctl: warning: the node dropped {dropped} packets because this client read too slowly");
            }
            Some(ClientEvent::Error { message, .. }) => bail!("node refused: {message}"),
            Some(_) => {}
            None => bail!("node closed the session"),
        }
    }
    // Shown messages must not come back: wait for the node to confirm their deletion.
    let confirm = async {
        while pending_acks > 0 {
            match f.next().await? {
                Some(Followed::Event(ClientEvent::Acked { .. })) => pending_acks -= 1,
                Some(Followed::Event(ClientEvent::Error { message, .. })) => {
                    bail!("node refused: {message}")
                }
                Some(_) => {}
                None => bail!("node closed the session"),
            }
        }
        anyhow::Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), confirm)
        .await
        .map_err(|_| {
            anyhow!(
                "the node did not confirm acknowledgements; those messages will be fetched again"
            )
        })??;
    f.close();
    target_node::hang_up(&ep).await;
    Ok(ExitCode::SUCCESS)
}

/// Read events until one matches `want` (returned); deliveries meanwhile are kept in
/// `buffered`, errors end the command.
async fn wait_for(
    rd: &mut ClientReader,
    buffered: &mut Vec<EchoPacket>,
    want: impl Fn(&ClientEvent) -> bool,
) -> anyhow::Result<ClientEvent> {
    loop {
        match rd.next_event().await? {
            Some(ev) if want(&ev) => return Ok(ev),
            Some(ClientEvent::Deliver(batch)) => buffered.extend(batch),
            Some(ClientEvent::Error { message, .. }) => bail!("node refused: {message}"),
            Some(_) => {}
            None => bail!("node closed the session"),
        }
    }
}

/// What printing one packet did.
struct Shown {
    /// Lines printed (0 for a file chunk that is not the last, or a message for someone else).
    lines: u64,
    /// Whether the packet was addressed to this key (and so may be acknowledged).
    mine: bool,
}

/// Print one received packet. Messages encrypted to another key (other members of a shared
/// ozone) are skipped silently and never acknowledged.
fn show(
    opened: Result<e2e::Opened, e2e::OpenError>,
    files: &mut Reassembler,
    out_dir: &Path,
    json: bool,
) -> anyhow::Result<Shown> {
    let mut out = std::io::stdout().lock();
    let line = match opened {
        Err(e2e::OpenError::NotForMe) => {
            return Ok(Shown {
                lines: 0,
                mine: false,
            })
        }
        Err(e) => {
            let from = e.claimed_sender();
            let id = from
                .map(|f| f.short_id().to_string())
                .unwrap_or_else(|| "?".into());
            if json {
                serde_json::json!({"from": id, "fingerprint": from.map(|f| f.hex()),
                    "status": "rejected", "reason": e.to_string()})
                .to_string()
            } else {
                format!("{id} REJECTED {e}")
            }
        }
        Ok(m) => {
            let id = m.sender.short_id().to_string();
            match m.content {
                Content::Text(text) => {
                    if json {
                        serde_json::json!({"from": id, "fingerprint": m.sender.hex(), "status": "verified",
                            "sent_at_ms": m.sent_at_ms, "text": text})
                        .to_string()
                    } else {
                        format!("{id} verified {}", sanitize(&text))
                    }
                }
                Content::FileChunk(c) => match files.add(m.sender.0, c) {
                    Ok(None) => {
                        return Ok(Shown {
                            lines: 0,
                            mine: true,
                        })
                    }
                    Ok(Some(f)) => {
                        let path = files::safe_destination(out_dir, &f.name);
                        std::fs::write(&path, &f.data)
                            .with_context(|| format!("writing {}", path.display()))?;
                        if json {
                            serde_json::json!({"from": id, "fingerprint": m.sender.hex(), "status": "verified",
                                "sent_at_ms": m.sent_at_ms, "file": f.name, "bytes": f.data.len(),
                                "path": path.display().to_string()})
                            .to_string()
                        } else {
                            format!(
                                "{id} verified file {} ({} bytes) saved to {}",
                                sanitize(&f.name),
                                f.data.len(),
                                path.display()
                            )
                        }
                    }
                    Err(e) => {
                        if json {
                            serde_json::json!({"from": id, "fingerprint": m.sender.hex(), "status": "rejected", "reason": e.to_string()})
                                .to_string()
                        } else {
                            format!("{id} REJECTED {e}")
                        }
                    }
                },
            }
        }
    };
    writeln!(out, "{line}").map_err(|e| anyhow!("writing to stdout: {e}"))?;
    out.flush().ok();
    Ok(Shown {
        lines: 1,
        mine: true,
    })
}
