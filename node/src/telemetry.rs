//! Logging setup (`tracing`), human or JSON, with a log level that can change at run time
//! (configuration reload), and OpenTelemetry trace export over OTLP/HTTP (off unless an
//! endpoint is configured), with the W3C trace context carried between nodes so that a join
//! or a replicated deposit is one trace across the mesh.
//!
//! Exported spans: `peer.handshake`, `join`, `join.accept`, `drain`, `ozone.deposit`,
//! `ozone.replicate`, `ozone.store`, `ozone.repair`, `admin.request` (target
//! `echomesh_node`, level INFO or above). Events are logs, not span events.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer};

type SetLevel = Box<dyn Fn(&str) -> anyhow::Result<()> + Send + Sync>;
static SET_LEVEL: OnceLock<SetLevel> = OnceLock::new();

/// True while spans are exported: only then is a trace context sent to other nodes.
static EXPORTING: AtomicBool = AtomicBool::new(false);

/// The trace exporter; `shutdown` flushes what is buffered (call it outside the runtime).
pub struct TraceExport(Option<SdkTracerProvider>);

impl TraceExport {
    pub fn shutdown(self) {
        if let Some(p) = self.0 {
            EXPORTING.store(false, Ordering::SeqCst);
            if let Err(e) = p.shutdown() {
                eprintln!("echomesh-node: flushing traces failed: {e}");
            }
        }
    }
}

fn tracer_provider(
    t: &crate::config::Telemetry,
    instance: Option<String>,
) -> anyhow::Result<Option<SdkTracerProvider>> {
    let env_endpoint = [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ]
    .iter()
    .any(|v| std::env::var(v).is_ok_and(|x| !x.is_empty()));
    if t.otlp_endpoint.is_empty() && !env_endpoint {
        return Ok(None);
    }
    // Headers, timeout and compression come from the standard OTEL_EXPORTER_OTLP_* variables.
    use opentelemetry_otlp::WithExportConfig;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_http();
    if !t.otlp_endpoint.is_empty() {
        let e = t.otlp_endpoint.trim_end_matches('/');
        let full = if e.ends_with("/v1/traces") {
            e.to_string()
        } else {
            format!("{e}/v1/traces")
        };
        builder = builder.with_endpoint(full);
    }
    let exporter = builder
        .build()
        .map_err(|e| anyhow::anyhow!("telemetry: cannot build the OTLP exporter: {e}"))?;
    let ratio = std::env::var("OTEL_TRACES_SAMPLER_ARG")
        .ok()
        .and_then(|v| v.parse::<f64>().ok())
        .unwrap_or(t.sample_ratio)
        .clamp(0.0, 1.0);
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_err() {
        resource = resource.with_service_name(t.service_name.clone());
    }
    if let Some(id) = instance {
        resource = resource.with_attribute(opentelemetry::KeyValue::new("service.instance.id", id));
    }
    let resource = resource
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(Some(
        SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                ratio,
            ))))
            .with_resource(resource)
            .build(),
    ))
}

/// Install logging and, when configured, trace export. Call before starting the runtime.
pub fn init(
    log: &crate::config::LogConfig,
    t: &crate::config::Telemetry,
    instance: Option<String>,
) -> anyhow::Result<TraceExport> {
    let provider = tracer_provider(t, instance)?;
    let otel = provider.as_ref().map(|p| {
        let spans_only = tracing_subscriber::filter::filter_fn(|m| {
            m.is_span()
                && m.target().starts_with("echomesh_node")
                && *m.level() <= tracing::Level::INFO
        });
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("echomesh-node"))
            .with_filter(spans_only)
    });
    init_logging_with(&log.level, &log.format, otel)?;
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        EXPORTING.store(true, Ordering::SeqCst);
        tracing::info!(
            sample_ratio = t.sample_ratio,
            "exporting traces over OTLP/HTTP"
        );
    }
    Ok(TraceExport(provider))
}

/// The current span's trace context, to send along a request to another node (`None` when
/// traces are not exported or no span is recording).
pub fn trace_context() -> Option<crate::wire::TraceContext> {
    if !EXPORTING.load(Ordering::Relaxed) {
        return None;
    }
    let cx = tracing::Span::current().context();
    use opentelemetry::trace::TraceContextExt;
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut map = HashMap::new();
    TraceContextPropagator::new().inject_context(&cx, &mut map);
    Some(crate::wire::TraceContext {
        entries: map.into_iter().collect(),
    })
}

/// Make `span` a child of the remote span described by `tc` (another node's request).
pub fn follow(span: &tracing::Span, tc: Option<&crate::wire::TraceContext>) {
    let Some(tc) = tc else { return };
    if !EXPORTING.load(Ordering::Relaxed) {
        return;
    }
    let map: HashMap<String, String> = tc.entries.iter().take(8).cloned().collect();
    let cx = TraceContextPropagator::new().extract(&map);
    let _ = span.set_parent(cx);
}

/// Install the global subscriber. `RUST_LOG` overrides the configured level.
pub fn init_logging(level: &str, format: &str) -> anyhow::Result<()> {
    init_logging_with::<tracing_subscriber::layer::Identity>(level, format, None)
}

fn init_logging_with<L>(level: &str, format: &str, extra: Option<L>) -> anyhow::Result<()>
where
    L: Layer<tracing_subscriber::Registry> + Send + Sync + 'static,
{
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
        .with(extra)
        .with(output.with_filter(filter))
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
