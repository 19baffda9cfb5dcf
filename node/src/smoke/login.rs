//! Private-server login on an Echo client connection: until the client answers a challenge
//! (`0097a`) with a `0097b` signed by a registered participant's key, its frames are dropped
//! (counted) and it is sent a fresh challenge at most every `smoke.challenge_interval_secs`.

use std::time::{Duration, Instant};

use bytes::Bytes;
use echomesh_proto::bridge::frame::{self, Frame};
use echomesh_proto::smoke::login;

use crate::bridge::hub::Link;
use crate::ctx::Ctx;

pub const TYPE_CHALLENGE: &str = "0097a";
pub const TYPE_ANSWER: &str = "0097b";

/// Handle a frame from a client that has not logged in yet.
pub fn gate(ctx: &Ctx, link: &Link, f: &Frame<'_>) {
    if let Frame::Control { ty, content } = f {
        if *ty == TYPE_ANSWER {
            check(ctx, link, content);
            return;
        }
    }
    ctx.metrics
        .smoke
        .refused
        .with_label_values(&["unauthenticated"])
        .inc();
    challenge(ctx, link);
}

/// Send a challenge unless one went out within the interval.
pub fn challenge(ctx: &Ctx, link: &Link) {
    let now = Instant::now();
    let every = Duration::from_secs(ctx.smoke.cfg.challenge_interval_secs);
    let c = {
        let mut l = link.login();
        if l.authenticated
            || l.challenge
                .as_ref()
                .is_some_and(|(_, t)| now.duration_since(*t) < every)
        {
            return;
        }
        let c = login::challenge();
        l.challenge = Some((c.clone(), now));
        c
    };
    super::service::send(
        ctx,
        link,
        vec![Bytes::from(frame::control_frame(
            TYPE_CHALLENGE,
            c.as_bytes(),
        ))],
    );
}

fn check(ctx: &Ctx, link: &Link, content: &[u8]) {
    let Some((sent, _)) = link.login().challenge.clone() else {
        ctx.metrics
            .smoke
            .logins
            .with_label_values(&["refused"])
            .inc();
        return;
    };
    let view = ctx.smoke.view();
    let result = match frame::binary_content(content) {
        Some(answer) => login::verify(
            &answer,
            &sent,
            view.participants.iter().filter_map(|p| p.keys.as_ref()),
        )
        .map_err(|e| e.to_string()),
        None => Err("the answer is not base-64".to_string()),
    };
    match result {
        Ok(id) => {
            let mut l = link.login();
            l.authenticated = true;
            l.challenge = None;
            ctx.metrics.smoke.logins.with_label_values(&["ok"]).inc();
            tracing::info!(remote = %link.remote, id = %id, "Smoke client logged in to the private server");
        }
        Err(e) => {
            ctx.metrics
                .smoke
                .logins
                .with_label_values(&["refused"])
                .inc();
            tracing::info!(remote = %link.remote, error = %e, "Smoke private-server login refused");
            // A fresh challenge for the next attempt.
            link.login().challenge = None;
            challenge(ctx, link);
        }
    }
}
