//! Logging setup (`tracing`), human or JSON, with a log level that can change at run time
//! (configuration reload).

use std::sync::OnceLock;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

type SetLevel = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// Install the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(v) if !v.is_empty() => EnvFilter::try_new(v)?,
        _ => EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log.level {level:?}: {e}"))?,
    };
    let (filter, handle) = reload::Layer::new(filter);
    use std::io::IsTerminal;
    let output = if format == "json" {
        fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .boxed()
    } else {
        fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(std::io::stderr().is_terminal())
            .boxed()
    };
    tracing_subscriber::registry()
        .with(filter)
        .with(output)
        .try_init()
        .map_err(|e| anyhow::anyhow!("cannot install logger: {e}"))?;
    let _ = SET_LEVEL.set(Box::new(move |level| {
        let f =
            EnvFilter::try_new(level).map_err(|e| anyhow::anyhow!("log.level {level:?}: {e}"))?;
        handle
            .reload(f)
            .map_err(|e| anyhow::anyhow!("cannot change the log level: {e}"))
    }));
    Ok(())
}

/// Change the log level of the running process. `Ok(false)` when `RUST_LOG` is set (it wins)
/// or logging was not installed by [`init_logging`] (tests, bench).
pub fn set_log_level(level: &str) -> anyhow::Result<bool> {
    if std::env::var("RUST_LOG").is_ok_and(|v| !v.is_empty()) {
        return Ok(false);
    }
    match SET_LEVEL.get() {
        Some(f) => f(level).map(|()| true),
        None => Ok(false),
    }
}
