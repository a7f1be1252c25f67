//! How `weft up` writes its log: to stderr from a thread of its own (a stalled stderr
//! drops lines, never blocks the runtime), as text for a person or as JSON lines.
//!
//! JSON (`--log-format json`): one object per line with `time` (RFC 3339, UTC), `level`,
//! `target`, the `component` and `version` an event names, and `message`; any other
//! field of the event follows under its own name.

use std::fmt;

use tracing::field::{Field, Visit};
use tracing::{Event, Subscriber};
use tracing_appender::non_blocking::WorkerGuard;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Log lines queued for stderr before more are dropped.
const LOG_QUEUE_LINES: usize = 16_384;

/// What the filter is when `RUST_LOG` is not set.
const DEFAULT_FILTER: &str =
    "info,wasmtime_wasi_http=warn,cranelift=warn,wasmtime=warn,async_nats=warn";

/// How log lines read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// For a person: time, level, where, the message and its fields.
    Text,
    /// One JSON object per line, for a log pipeline.
    Json,
}

/// Starts logging to stderr in `format`. The guard writes out what is queued when it is
/// dropped (at the end of `main`).
pub fn init(format: LogFormat) -> WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_QUEUE_LINES)
        .finish(std::io::stderr());
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| DEFAULT_FILTER.into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer);
    match format {
        LogFormat::Text => {
            // The messages that carry a `component` field name it already.
            let fields =
                tracing_subscriber::fmt::format::debug_fn(|w, field, value| match field.name() {
                    "component" => Ok(()),
                    "message" => write!(w, "{value:?}"),
                    name => write!(w, "{name}={value:?}"),
                });
            builder
                .fmt_fields(fields)
                .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
                .init()
        }
        LogFormat::Json => builder.event_format(JsonLines).init(),
    }
    guard
}

/// The JSON-lines format.
#[derive(Debug)]
struct JsonLines;

impl<S, N> FormatEvent<S, N> for JsonLines
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let meta = event.metadata();
        let mut line = serde_json::Map::new();
        line.insert("time".into(), jiff::Timestamp::now().to_string().into());
        line.insert(
            "level".into(),
            meta.level().as_str().to_ascii_lowercase().into(),
        );
        line.insert("target".into(), meta.target().into());
        let mut fields = Fields::default();
        event.record(&mut fields);
        for name in ["component", "version", "trace_id"] {
            if let Some(value) = fields.named.remove(name) {
                line.insert(name.into(), value);
            }
        }
        line.insert("message".into(), fields.message.into());
        line.extend(fields.named);
        writeln!(writer, "{}", serde_json::Value::Object(line))
    }
}

/// An event's fields, as JSON values.
#[derive(Default)]
struct Fields {
    message: String,
    named: serde_json::Map<String, serde_json::Value>,
}

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn fmt::Debug) {
        let text = format!("{value:?}");
        if field.name() == "message" {
            self.message = text;
        } else {
            self.named.insert(field.name().into(), text.into());
        }
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        if field.name() == "message" {
            self.message = value.to_string();
        } else {
            self.named.insert(field.name().into(), value.into());
        }
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.named.insert(field.name().into(), value.into());
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.named.insert(field.name().into(), value.into());
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.named.insert(field.name().into(), value.into());
    }
}
