//! Traces (OpenTelemetry, exported over OTLP/HTTP): a span for each call a trigger makes
//! into a component, children for what the guest does that leaves it (outgoing HTTP,
//! publishes, requests), and W3C trace context (`traceparent`, `tracestate`) read from
//! incoming HTTP headers and message headers and written into outgoing ones, so one user
//! request is one trace across components, transports and hosts.
//!
//! Off unless an endpoint is configured: then no span is made and nothing is read or
//! written (triggers hold `Option<Arc<Tracing>>`, and a call's [`CallTrace`] is `None`).

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{
    SpanContext, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState, Tracer as _,
    TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    IdGenerator, RandomIdGenerator, Sampler, SdkTracer, SdkTracerProvider,
};

/// How a host traces.
#[derive(Debug, Clone, PartialEq)]
pub struct TraceConfig {
    /// The OTLP/HTTP endpoint's base (`http://collector:4318`); spans go to `/v1/traces`.
    pub endpoint: String,
    /// The share of new traces recorded, 0 to 1. A call that continues a trace follows
    /// its caller's decision (the `sampled` flag of `traceparent`).
    pub sample: f64,
    /// `service.name` of the spans (default `weft`).
    pub service: String,
}

/// Spans of one component call, as the trigger names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    /// An HTTP request (gRPC included): a server span.
    Http,
    /// A message, a durable delivery, a tick or a WebSocket event: a consumer span.
    Message,
}

/// A host's tracer: made once at start from [`TraceConfig`], shared by every trigger.
#[derive(Debug)]
pub struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
    /// The share of new traces recorded (`TraceConfig::sample`, within 0 to 1).
    sample: f64,
    /// Ids of new traces, decided on here (see [`Tracing::call`]).
    ids: RandomIdGenerator,
}

impl Tracing {
    /// A tracer exporting to `config.endpoint` in batches, from a thread of its own.
    pub fn start(config: &TraceConfig) -> anyhow::Result<Arc<Tracing>> {
        let endpoint = format!("{}/v1/traces", config.endpoint.trim_end_matches('/'));
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_endpoint(endpoint.clone())
            .with_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| anyhow::anyhow!("OTLP exporter for `{endpoint}`: {e}"))?;
        let sample = config.sample.clamp(0.0, 1.0);
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                sample,
            ))))
            .with_resource(
                opentelemetry_sdk::Resource::builder()
                    .with_service_name(config.service.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("weft");
        tracing::info!("traces: OTLP to {endpoint}, sampling {sample}");
        Ok(Arc::new(Tracing {
            provider,
            tracer,
            propagator: TraceContextPropagator::new(),
            sample,
            ids: RandomIdGenerator::default(),
        }))
    }

    /// Starts the span of a call into `component` (`version`), continuing the trace
    /// that `headers` carry, if any. `name` makes the span's name (`GET /orders/...`,
    /// the subject). The span ends with [`CallTrace::finish`], or when the last clone
    /// drops.
    ///
    /// A call that carries no trace context starts a trace, sampled or not as the
    /// SDK's ratio sampler would decide from its id. That is decided here, first: one
    /// not sampled gets no SDK span, only a context that carries its id on, unsampled;
    /// at a ratio of 0 it gets nothing at all (`None`).
    pub fn call<'h>(
        self: &Arc<Self>,
        kind: CallKind,
        name: impl FnOnce() -> String,
        component: &str,
        version: &str,
        headers: impl Iterator<Item = (&'h str, &'h str)>,
    ) -> Option<CallTrace> {
        let carrier = Carrier::from_iter(headers);
        let mut trace_id = None;
        if carrier.0.is_empty() {
            if self.sample <= 0.0 {
                return None;
            }
            let id = self.ids.new_trace_id();
            if !sampled(self.sample, id) {
                let unsampled = SpanContext::new(
                    id,
                    self.ids.new_span_id(),
                    TraceFlags::default(),
                    false,
                    TraceState::default(),
                );
                return Some(CallTrace {
                    cx: Context::new().with_remote_span_context(unsampled),
                    tracing: self.clone(),
                });
            }
            // The SDK's sampler, deciding on the same id, records it.
            trace_id = Some(id);
        }
        let parent = self.propagator.extract(&carrier);
        let mut builder = self.tracer.span_builder(name());
        builder.trace_id = trace_id;
        let span = builder
            .with_kind(match kind {
                CallKind::Http => SpanKind::Server,
                CallKind::Message => SpanKind::Consumer,
            })
            .start_with_context(&self.tracer, &parent);
        let call = CallTrace {
            cx: parent.with_span(span),
            tracing: self.clone(),
        };
        // What a span not sampled would drop is not even made.
        call.set(|| KeyValue::new("weft.component", component.to_string()));
        call.set(|| KeyValue::new("weft.version", version.to_string()));
        Some(call)
    }

    /// Sends what is buffered and stops the exporter (host shutdown).
    pub fn shutdown(&self) {
        if let Err(e) = self.provider.shutdown() {
            tracing::warn!("traces: exporting the last spans: {e}");
        }
    }
}

/// One call's place in a trace: its span, as the parent of what the guest does.
#[derive(Debug, Clone)]
pub struct CallTrace {
    cx: Context,
    tracing: Arc<Tracing>,
}

impl CallTrace {
    /// The trace's id (32 hex digits), for log lines.
    pub fn trace_id(&self) -> String {
        self.cx.span().span_context().trace_id().to_string()
    }

    /// Notes how the call ended (`ok`, `trap`, ... as in the metrics) and its error, and
    /// ends the span.
    pub fn finish(&self, outcome: &'static str, error: Option<&str>) {
        let span = self.cx.span();
        if !span.is_recording() {
            return;
        }
        span.set_attribute(KeyValue::new("weft.outcome", outcome));
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }

    /// Adds an attribute to the call's span, made only if the span is recorded.
    pub fn set(&self, attribute: impl FnOnce() -> KeyValue) {
        let span = self.cx.span();
        if span.is_recording() {
            span.set_attribute(attribute());
        }
    }

    /// Notes whether the call's instance was reused (`warm`) or fresh.
    pub fn instance(&self, warm: bool) {
        self.set(|| KeyValue::new("weft.instance.warm", warm));
    }

    /// A child span for something the guest does (`publish orders.placed`), as a client
    /// or producer, with its attributes. In a trace not sampled no span is made (nothing
    /// would be recorded): what it writes into headers is the call's own context, which
    /// carries the trace on, unsampled.
    pub fn child(
        &self,
        kind: SpanKind,
        name: impl FnOnce() -> String,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> ChildSpan {
        if !self.cx.span().is_recording() {
            return ChildSpan {
                cx: self.cx.clone(),
                tracing: self.tracing.clone(),
                own: false,
            };
        }
        let tracer = &self.tracing.tracer;
        let span = tracer
            .span_builder(name())
            .with_kind(kind)
            .with_attributes(attributes())
            .start_with_context(tracer, &self.cx);
        ChildSpan {
            cx: self.cx.with_span(span),
            tracing: self.tracing.clone(),
            own: true,
        }
    }

    /// Whether the call's span is recorded (its trace sampled).
    pub fn recording(&self) -> bool {
        self.cx.span().is_recording()
    }
}

/// A span of something a guest does; it ends when dropped.
#[derive(Debug)]
pub struct ChildSpan {
    cx: Context,
    tracing: Arc<Tracing>,
    /// Whether the span is its own (not the call's, in a trace not sampled).
    own: bool,
}

impl ChildSpan {
    /// Adds its trace context to outgoing headers (message or HTTP), replacing any the
    /// guest set, so the receiver continues this trace.
    pub fn inject(&self, headers: &mut Vec<(String, String)>) {
        headers.retain(|(k, _)| !is_trace_header(k));
        let mut carrier = Carrier::default();
        self.tracing
            .propagator
            .inject_context(&self.cx, &mut carrier);
        headers.extend(carrier.0);
    }

    /// Marks it failed with `error`.
    pub fn fail(&self, error: &str) {
        if self.own {
            self.cx.span().set_status(Status::error(error.to_string()));
        }
    }
}

impl Drop for ChildSpan {
    fn drop(&mut self) {
        if self.own {
            self.cx.span().end();
        }
    }
}

/// Whether a new trace `trace_id` is recorded at ratio `sample`: the decision of the
/// SDK's `TraceIdRatioBased` sampler (its low 63 bits against the ratio), so the span
/// made for a sampled one is recorded.
fn sampled(sample: f64, trace_id: TraceId) -> bool {
    if sample >= 1.0 {
        return true;
    }
    let bound = (sample.max(0.0) * (1u64 << 63) as f64) as u64;
    let low = u64::from_be_bytes(trace_id.to_bytes()[8..].try_into().unwrap_or_default());
    (low >> 1) < bound
}

/// Whether `name` is a W3C trace context header (compared without case).
pub fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case("traceparent") || name.eq_ignore_ascii_case("tracestate")
}

/// Headers as propagation reads and writes them (names lower-case).
#[derive(Debug, Default)]
struct Carrier(Vec<(String, String)>);

impl<'h> FromIterator<(&'h str, &'h str)> for Carrier {
    fn from_iter<I: IntoIterator<Item = (&'h str, &'h str)>>(headers: I) -> Self {
        Carrier(
            headers
                .into_iter()
                .filter(|(k, _)| is_trace_header(k))
                .map(|(k, v)| (k.to_ascii_lowercase(), v.to_string()))
                .collect(),
        )
    }
}

impl Extractor for Carrier {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(k, _)| k.as_str()).collect()
    }
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        self.0.push((key.to_string(), value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A tracer exporting to `receiver`, a port of the test's own that never answers
    /// (the exporter only fails to send).
    fn tracer(receiver: &std::net::TcpListener, sample: f64) -> Arc<Tracing> {
        Tracing::start(&TraceConfig {
            endpoint: format!("http://{}", receiver.local_addr().unwrap()),
            sample,
            service: "weft-test".into(),
        })
        .unwrap()
    }

    #[test]
    fn trace_context_passes_from_incoming_to_outgoing_headers() {
        // A port of the test's own that never answers: the exporter only fails to send.
        let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tracing = tracer(&receiver, 1.0);
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let call = tracing
            .call(
                CallKind::Http,
                || "GET /x".into(),
                "c",
                "v",
                [("TraceParent", parent)].into_iter(),
            )
            .expect("a span");
        assert_eq!(call.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = call.child(SpanKind::Producer, || "publish a".into(), Vec::new);
        let mut headers = vec![("traceparent".to_string(), "forged".to_string())];
        child.inject(&mut headers);
        let written: Vec<_> = headers.iter().filter(|(k, _)| k == "traceparent").collect();
        assert_eq!(written.len(), 1, "{headers:?}");
        assert!(
            written[0]
                .1
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && written[0].1.ends_with("-01"),
            "same trace, sampled, a new parent: {headers:?}"
        );
        assert!(!written[0].1.contains("00f067aa0ba902b7"));
        drop(child);
        call.finish("ok", None);
        // A call without trace context starts a trace, recorded at a ratio of 1.
        let root = tracing
            .call(CallKind::Http, || "GET /y".into(), "c", "v", [].into_iter())
            .expect("a span");
        assert!(root.recording());
        assert_ne!(root.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        tracing.shutdown();
    }

    #[test]
    fn sampling_at_zero_starts_no_trace_but_follows_callers() {
        let receiver = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tracing = tracer(&receiver, 0.0);
        let untraced = tracing.call(
            CallKind::Message,
            || unreachable!("no span is named"),
            "c",
            "v",
            [("content-type", "text/plain")].into_iter(),
        );
        assert!(untraced.is_none(), "no trace started at 0");
        // Above 0, a trace not sampled is still started and carried on, unsampled.
        let rare = tracer(&receiver, 1e-12);
        let root = rare
            .call(
                CallKind::Http,
                || unreachable!("no span is named"),
                "c",
                "v",
                [].into_iter(),
            )
            .expect("a trace, not sampled");
        assert!(!root.recording());
        let mut headers = vec![];
        root.child(SpanKind::Client, || "GET".into(), Vec::new)
            .inject(&mut headers);
        let id = root.trace_id();
        assert!(
            headers[0].1.starts_with(&format!("00-{id}-")) && headers[0].1.ends_with("-00"),
            "{headers:?}"
        );
        assert_ne!(id, "00000000000000000000000000000000");
        rare.shutdown();
        // A caller's trace not sampled goes on, not sampled and not recorded.
        let unsampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00";
        let call = tracing
            .call(
                CallKind::Message,
                || "process a".into(),
                "c",
                "v",
                [("traceparent", unsampled)].into_iter(),
            )
            .expect("the caller's trace goes on");
        assert!(!call.cx.span().is_recording(), "nothing recorded");
        let mut headers = vec![];
        call.child(SpanKind::Producer, || "publish b".into(), Vec::new)
            .inject(&mut headers);
        assert!(
            headers[0]
                .1
                .starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-")
                && headers[0].1.ends_with("-00"),
            "the trace goes on, not sampled: {headers:?}"
        );
        // A caller that sampled its trace is followed.
        let sampled = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let call = tracing
            .call(
                CallKind::Http,
                || "GET /".into(),
                "c",
                "v",
                [("traceparent", sampled)].into_iter(),
            )
            .expect("a span");
        assert!(call.cx.span().is_recording());
        tracing.shutdown();
    }
}
