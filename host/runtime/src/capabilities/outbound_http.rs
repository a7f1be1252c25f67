//! Host capability `wasi:http/outgoing-handler`: the guest may call only the hosts its
//! manifest entry allows; anything else gets the standard `HTTP-request-denied` error.

use std::sync::Arc;

use wasmtime::component::Linker;
use wasmtime_wasi_http::{RequestOptions, WasiBody, WasiHttpHooks, WasiHttpView};

use crate::spec::ValidSpec;

/// The outgoing-HTTP grant of a spec: its `allowed_outbound_hosts`.
pub fn grant(spec: &ValidSpec) -> OutboundPolicy {
    OutboundPolicy::new(&spec.allowed_outbound_hosts)
}

/// Adds `wasi:http` (types and `outgoing-handler`) to the linker. The store's
/// `WasiHttpView` hands out the [`OutboundPolicy`] as its hooks, so every request a guest
/// sends is checked in [`OutboundPolicy::allows`].
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)
}

/// The hosts one component may call, as written in `allowed_outbound_hosts`.
#[derive(Debug, Clone, Default)]
pub struct OutboundPolicy {
    allowed: Arc<[String]>,
}

impl OutboundPolicy {
    /// A policy allowing exactly `allowed` (`name`, `name:port` or `*`).
    pub fn new(allowed: &[String]) -> OutboundPolicy {
        OutboundPolicy {
            allowed: allowed.iter().map(|h| h.to_ascii_lowercase()).collect(),
        }
    }

    /// Whether a request to `authority` (`host` or `host:port`) may go out.
    pub fn allows(&self, authority: &str) -> bool {
        let authority = authority.to_ascii_lowercase();
        let host = authority
            .rsplit_once(':')
            .map_or(authority.as_str(), |(h, _)| h);
        self.allowed
            .iter()
            .any(|a| a == "*" || *a == authority || *a == host)
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), wasmtime_wasi_http::Error>> + Send>,
    ) -> SendFuture {
        _ = fut;
        let authority = request
            .uri()
            .authority()
            .map(|a| a.to_string())
            .unwrap_or_default();
        if !self.allows(&authority) {
            tracing::info!(%authority, "outgoing HTTP request denied by allowed_outbound_hosts");
            return Box::new(async { Err(wasmtime_wasi_http::Error::HttpRequestDenied) });
        }
        Box::new(async move {
            use http_body_util::BodyExt;
            let (response, io) = wasmtime_wasi_http::default_send_request(request, options).await?;
            Ok((
                response.map(BodyExt::boxed_unsync),
                Box::new(io) as Box<dyn Future<Output = _> + Send>,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_host_with_or_without_port() {
        let p = OutboundPolicy::new(&["api.example.com".into(), "localhost:8080".into()]);
        assert!(p.allows("api.example.com"));
        assert!(p.allows("API.example.com:443"));
        assert!(p.allows("localhost:8080"));
        assert!(!p.allows("localhost:9090"));
        assert!(!p.allows("evil.com"));
        assert!(OutboundPolicy::new(&["*".into()]).allows("anything:1"));
        assert!(!OutboundPolicy::default().allows("localhost"));
    }
}
