//! Host capability `wasi:http/outgoing-handler`: the guest may call only what its
//! manifest's `allowed_outbound_hosts` grants (`scheme://host[:port]`, as in Spin; see
//! [`crate::spec::outbound`]). Every request is checked in one place,
//! [`OutboundPolicy::resolve`]:
//!
//! 1. by name: some grant must match the request's scheme, host and port, or the guest
//!    gets `HTTP-request-denied`;
//! 2. by address, after DNS resolution: the host's own listeners (HTTP and admin) are
//!    never reachable, and loopback, private, link-local and unspecified addresses only
//!    when a matching grant names that address (or `localhost`); otherwise
//!    `destination-IP-prohibited`.
//!
//! The connection then goes to an address that passed ([`send`]), so a name that
//! resolves differently a moment later (DNS rebinding) cannot slip past the check.

mod send;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use wasmtime::component::Linker;
use wasmtime_wasi_http::{Error, RequestOptions, WasiBody, WasiHttpHooks, WasiHttpView};

use crate::spec::ValidSpec;
use crate::spec::outbound::{Destination, OutboundGrant, Scheme};

/// The outgoing-HTTP grant of a spec: its `allowed_outbound_hosts`, minus the host's own
/// `listeners`.
pub fn grant(spec: &ValidSpec, listeners: &HostListeners) -> OutboundPolicy {
    OutboundPolicy {
        component_slots: Arc::new(Semaphore::new(spec.limits.max_outbound_requests as usize)),
        instance_slots: Arc::new(Semaphore::new(PER_INSTANCE)),
        // Validated with the spec: every entry parses.
        grants: spec
            .allowed_outbound_hosts
            .iter()
            .filter_map(|g| OutboundGrant::parse(g).ok())
            .collect(),
        listeners: listeners.clone(),
        trace: None,
    }
}

/// Adds `wasi:http` to the linker: 0.2 (types and `outgoing-handler`) and 0.3 (types
/// and `client`). The store's `WasiHttpView` hands out the [`OutboundPolicy`] as its
/// hooks for both, so every request a guest sends is checked in
/// [`OutboundPolicy::resolve`]. (0.3 only on an engine with the component model's
/// async support: see `engine::Engines`.)
pub fn add_to_linker<T: WasiHttpView + 'static>(linker: &mut Linker<T>) -> wasmtime::Result<()> {
    wasmtime_wasi_http::p2::add_only_http_to_linker_async(linker)?;
    if linker.engine().get_concurrency_support() {
        wasmtime_wasi_http::p3::add_to_linker(linker)?;
    }
    Ok(())
}

/// The addresses the host itself listens on (HTTP routes and the admin API): no guest
/// may connect to them, whatever it is granted.
#[derive(Debug, Clone, Default)]
pub struct HostListeners(Arc<[SocketAddr]>);

impl HostListeners {
    /// The host's listening addresses.
    pub fn new(addrs: impl IntoIterator<Item = SocketAddr>) -> HostListeners {
        HostListeners(addrs.into_iter().collect())
    }

    /// Whether a connection to `addr` would reach one of the listeners: same port, and
    /// the same address, or any address of this machine if the listener is on `0.0.0.0`
    /// or `::` (connecting to `0.0.0.0` reaches local listeners too).
    fn contains(&self, addr: SocketAddr) -> bool {
        let ip = canonical(addr.ip());
        self.0.iter().any(|listener| {
            listener.port() == addr.port()
                && (canonical(listener.ip()) == ip
                    || ip.is_unspecified()
                    || (listener.ip().is_unspecified() && is_this_machine(ip)))
        })
    }
}

/// Whether `ip` is one of this machine's addresses: only those can be bound.
fn is_this_machine(ip: IpAddr) -> bool {
    ip.is_loopback() || std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// An IPv4-mapped IPv6 address (`::ffff:127.0.0.1`) as the IPv4 address it is.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Loopback, private, link-local (169.254.169.254 included), unspecified and other
/// addresses that lead inside the machine or its network rather than to the internet.
pub fn is_internal(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => is_internal_v4(v4),
        IpAddr::V6(v6) => is_internal_v6(v6),
    }
}

fn is_internal_v4(ip: Ipv4Addr) -> bool {
    let [a, b, ..] = ip.octets();
    ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0 // "this network"
        || (a == 100 && (64..128).contains(&b)) // shared address space (carrier NAT)
        || (a == 192 && b == 0 && ip.octets()[2] == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
}

fn is_internal_v6(ip: Ipv6Addr) -> bool {
    let first = ip.segments()[0];
    // NAT64 (64:ff9b::/96) carries an IPv4 address: judge that one.
    if ip.segments()[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        let [.., a, b, c, d] = ip.octets();
        return is_internal_v4(Ipv4Addr::new(a, b, c, d));
    }
    ip.is_loopback()
        || ip.is_unspecified()
        || ip.is_multicast()
        || (first & 0xfe00) == 0xfc00 // unique local
        || (first & 0xffc0) == 0xfe80 // link-local
        || (first & 0xffc0) == 0xfec0 // site-local (deprecated)
}

/// Outgoing HTTP requests one instance may have open at once.
pub const PER_INSTANCE: usize = 16;

/// Where one component may send outgoing HTTP, and how many requests it may have open.
#[derive(Debug, Clone)]
pub struct OutboundPolicy {
    grants: Arc<[OutboundGrant]>,
    listeners: HostListeners,
    /// Open requests of all the component's instances (`limits.max_outbound_requests`).
    component_slots: Arc<Semaphore>,
    /// Open requests of one instance ([`PER_INSTANCE`]).
    instance_slots: Arc<Semaphore>,
    /// The span of the call being handled, when traces are on.
    trace: Option<crate::trace::CallTrace>,
}

impl OutboundPolicy {
    /// The policy for a new instance: the component's grants and shared slots, and
    /// slots of its own.
    pub fn for_instance(&self) -> OutboundPolicy {
        OutboundPolicy {
            instance_slots: Arc::new(Semaphore::new(PER_INSTANCE)),
            ..self.clone()
        }
    }

    /// The span of the call the instance handles next: its requests continue it.
    pub fn set_trace(&mut self, trace: Option<crate::trace::CallTrace>) {
        self.trace = trace;
    }

    /// A slot in both the instance's and the component's count, held until the
    /// request's connection is done with.
    fn take_slot(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), Error> {
        match (
            self.instance_slots.clone().try_acquire_owned(),
            self.component_slots.clone().try_acquire_owned(),
        ) {
            (Ok(instance), Ok(component)) => Ok((instance, component)),
            _ => {
                tracing::info!(
                    "outgoing HTTP refused: the instance ({PER_INSTANCE}) or the component (limits.max_outbound_requests) has as many requests open as it may"
                );
                Err(Error::ConnectionLimitReached)
            }
        }
    }

    /// The one check of an outgoing request to `uri`: the addresses it may connect to, in
    /// the resolver's order, or the error the guest gets.
    pub async fn resolve(&self, uri: &http::Uri) -> Result<Vec<SocketAddr>, Error> {
        let scheme = uri
            .scheme_str()
            .and_then(Scheme::parse)
            .ok_or(Error::HttpRequestUriInvalid)?;
        let host = Destination::parse(uri.host().ok_or(Error::HttpRequestUriInvalid)?);
        let port = uri.port_u16().unwrap_or(scheme.default_port());
        let matching: Vec<&OutboundGrant> = self
            .grants
            .iter()
            .filter(|g| g.matches(scheme, &host, port))
            .collect();
        if matching.is_empty() {
            tracing::info!(
                "outgoing HTTP to {}://{host}:{port} denied: no grant in allowed_outbound_hosts matches",
                uri.scheme_str().unwrap_or_default()
            );
            return Err(Error::HttpRequestDenied);
        }
        let resolved: Vec<SocketAddr> = match &host {
            Destination::Ip(ip) => vec![SocketAddr::new(*ip, port)],
            Destination::Name(name) => tokio::net::lookup_host((name.as_str(), port))
                .await
                .map_err(|e| Error::DnsError {
                    rcode: Some(e.to_string()),
                    info_code: None,
                })?
                .collect(),
        };
        let mut allowed = Vec::with_capacity(resolved.len());
        for addr in resolved {
            match self.address_allowed(&matching, addr) {
                Ok(()) => allowed.push(addr),
                Err(why) => tracing::info!("outgoing HTTP to {host} at {addr} refused: {why}"),
            }
        }
        if allowed.is_empty() {
            return Err(Error::DestinationIpProhibited);
        }
        Ok(allowed)
    }

    /// Whether a request that `matching` grants allow by name may connect to `addr`.
    fn address_allowed(
        &self,
        matching: &[&OutboundGrant],
        addr: SocketAddr,
    ) -> Result<(), &'static str> {
        let ip = canonical(addr.ip());
        if self.listeners.contains(addr) {
            return Err("it is one of the host's own listeners, which no guest may reach");
        }
        if is_internal(ip) && !matching.iter().any(|g| g.names_address(ip)) {
            return Err(
                "a loopback, private or link-local address is reached only by a grant that names it (or `localhost`)",
            );
        }
        Ok(())
    }
}

type SendFuture = Box<
    dyn Future<
            Output = wasmtime_wasi_http::Result<(
                http::Response<WasiBody>,
                Box<dyn Future<Output = Result<(), Error>> + Send>,
            )>,
        > + Send,
>;

impl WasiHttpHooks for OutboundPolicy {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), Error>> + Send>,
    ) -> SendFuture {
        _ = fut;
        let policy = self.clone();
        let mut request = request;
        let span = policy.trace.as_ref().map(|trace| {
            let span = trace.child(
                opentelemetry::trace::SpanKind::Client,
                || request.method().to_string(),
                || {
                    vec![
                        opentelemetry::KeyValue::new(
                            "http.request.method",
                            request.method().to_string(),
                        ),
                        opentelemetry::KeyValue::new(
                            "server.address",
                            request.uri().host().unwrap_or_default().to_string(),
                        ),
                    ]
                },
            );
            let mut headers = Vec::new();
            span.inject(&mut headers);
            for (name, value) in headers {
                if let (Ok(name), Ok(value)) = (
                    http::HeaderName::try_from(name),
                    http::HeaderValue::try_from(value),
                ) {
                    request.headers_mut().insert(name, value);
                }
            }
            span
        });
        Box::new(async move {
            use http_body_util::BodyExt;
            let _span = span;
            let slot = policy.take_slot()?;
            let addrs = policy.resolve(request.uri()).await?;
            let (response, io) = send::send(request, options, addrs).await?;
            // The connection's driver holds the slot until the response is read or dropped.
            let io = async move {
                let _slot = slot;
                io.await
            };
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

    fn policy(grants: &[&str], listeners: &[&str]) -> OutboundPolicy {
        let spec = crate::spec::ComponentSpec {
            allowed_outbound_hosts: grants.iter().map(|g| g.to_string()).collect(),
            ..Default::default()
        };
        grant(
            &spec.validate().unwrap(),
            &HostListeners::new(listeners.iter().map(|a| a.parse().unwrap())),
        )
    }

    async fn check(p: &OutboundPolicy, uri: &str) -> Result<Vec<SocketAddr>, String> {
        p.resolve(&uri.parse().unwrap())
            .await
            .map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn names_are_matched_before_anything_is_resolved() {
        let p = policy(&["https://api.example.com"], &[]);
        let err = check(&p, "http://api.example.com/").await.unwrap_err();
        assert_eq!(err, "HttpRequestDenied");
        let err = check(&p, "https://api.example.com:8443/")
            .await
            .unwrap_err();
        assert_eq!(err, "HttpRequestDenied");
        assert_eq!(
            check(&policy(&[], &[]), "http://x.example/")
                .await
                .unwrap_err(),
            "HttpRequestDenied"
        );
    }

    #[tokio::test]
    async fn internal_addresses_need_a_grant_that_names_them() {
        let any = policy(&["*://*:*"], &[]);
        for uri in [
            "http://127.0.0.1:8080/",
            "http://localhost:8080/",
            "http://[::1]:8080/",
            "http://[::ffff:127.0.0.1]:8080/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.1.2.3/",
            "http://192.168.1.1/",
            "http://0.0.0.0:8080/",
            "http://[fd00::1]/",
            "http://[64:ff9b::a00:1]/",
        ] {
            assert_eq!(
                check(&any, uri).await.unwrap_err(),
                "DestinationIpProhibited",
                "{uri}"
            );
        }
        let named = policy(&["http://localhost:*", "http://10.1.2.3"], &[]);
        let addrs = check(&named, "http://localhost:8080/").await.unwrap();
        assert!(addrs.iter().all(|a| a.ip().is_loopback()), "{addrs:?}");
        assert_eq!(
            check(&named, "http://10.1.2.3/").await.unwrap(),
            ["10.1.2.3:80".parse().unwrap()]
        );
        assert_eq!(
            check(&named, "http://10.1.2.4/").await.unwrap_err(),
            "HttpRequestDenied"
        );
        // A public address needs no naming.
        let public = policy(&["*://*:*"], &[]);
        assert!(check(&public, "http://93.184.215.14/").await.is_ok());
    }

    #[tokio::test]
    async fn the_hosts_own_listeners_are_never_reachable() {
        let p = policy(
            &["http://localhost:*", "http://127.0.0.1:*"],
            &["127.0.0.1:7070", "0.0.0.0:3000"],
        );
        for uri in [
            "http://127.0.0.1:7070/v1/components",
            "http://localhost:7070/",
            "http://127.0.0.1:3000/",
            "http://localhost:3000/",
        ] {
            assert_eq!(
                check(&p, uri).await.unwrap_err(),
                "DestinationIpProhibited",
                "{uri}"
            );
        }
        assert!(check(&p, "http://127.0.0.1:7071/").await.is_ok());
    }

    #[test]
    fn internal_ranges() {
        for ip in [
            "100.64.0.1",
            "172.16.0.1",
            "fe80::1",
            "::",
            "255.255.255.255",
        ] {
            assert!(is_internal(ip.parse().unwrap()), "{ip}");
        }
        for ip in ["93.184.215.14", "2606:4700::1", "8.8.8.8", "172.32.0.1"] {
            assert!(!is_internal(ip.parse().unwrap()), "{ip}");
        }
    }
}
