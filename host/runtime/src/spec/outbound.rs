//! Outgoing-HTTP grants as written in `allowed_outbound_hosts`, in Spin's form:
//! `scheme://host[:port]`. Parsing and matching by name live here; which addresses a
//! matching grant may connect to is decided after DNS resolution, by the
//! `outbound_http` capability.
//!
//! | grant | allows |
//! |---|---|
//! | `https://api.example.com` | `https` to that host on port 443 only |
//! | `http://localhost:8080` | `http` to `localhost` on port 8080 (loopback allowed: it is named) |
//! | `https://*.example.com` | `https` to any subdomain of `example.com` (not `example.com` itself) on 443 |
//! | `*://api.example.com:*` | either scheme, any port |
//! | `*://*:*` | any public host, either scheme, any port |
//! | `http://10.0.0.5:9000` | that private address (named, so allowed) on that port |
//!
//! A grant without a port means the scheme's default port (80 or 443), never every port.

use std::fmt;
use std::net::IpAddr;

/// One parsed `allowed_outbound_hosts` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboundGrant {
    /// `http` or `https`; `None` for `*`.
    scheme: Option<Scheme>,
    host: HostPattern,
    port: PortPattern,
}

/// The schemes outgoing HTTP may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// Plain HTTP (default port 80).
    Http,
    /// HTTP over TLS (default port 443).
    Https,
}

impl Scheme {
    /// `http` or `https`; anything else is `None`.
    pub fn parse(scheme: &str) -> Option<Scheme> {
        match scheme.to_ascii_lowercase().as_str() {
            "http" => Some(Scheme::Http),
            "https" => Some(Scheme::Https),
            _ => None,
        }
    }

    /// 80 or 443.
    pub fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostPattern {
    /// `*`: any host.
    Any,
    /// `*.example.com`: stored as `.example.com`.
    Subdomains(String),
    /// A host name, lower case, without a trailing dot.
    Name(String),
    /// An IP address literal (IPv6 written in brackets).
    Ip(IpAddr),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortPattern {
    /// `:*`.
    Any,
    /// No port written: the request's scheme's default port.
    SchemeDefault,
    /// `:8080`.
    Port(u16),
}

/// A request's destination host, normalised for matching: an IP address, or a lower-case
/// name without a trailing dot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    /// An IP address literal.
    Ip(IpAddr),
    /// A name, to be resolved.
    Name(String),
}

impl Destination {
    /// `host` as it appears in a URI authority (IPv6 in brackets).
    pub fn parse(host: &str) -> Destination {
        let bare = host.trim_start_matches('[').trim_end_matches(']');
        match bare.parse::<IpAddr>() {
            Ok(ip) => Destination::Ip(ip),
            Err(_) => Destination::Name(host.trim_end_matches('.').to_ascii_lowercase()),
        }
    }
}

impl fmt::Display for Destination {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Ip(ip) => write!(f, "{ip}"),
            Destination::Name(name) => f.write_str(name),
        }
    }
}

const FORM: &str = "a grant names scheme, host and port, as in Spin: `https://api.example.com`, `http://localhost:8080`, `https://*.example.com`, `*://host:*`";

impl OutboundGrant {
    /// Parses one `allowed_outbound_hosts` entry; the error says how to write it.
    pub fn parse(text: &str) -> Result<OutboundGrant, String> {
        let Some((scheme, rest)) = text.split_once("://") else {
            let suggestion = if text == "*" {
                "`*://*:*`".to_string()
            } else {
                format!("`https://{text}` or `http://{text}`")
            };
            return Err(format!(
                "`{text}` has no scheme: write {suggestion} ({FORM}); a grant without a port allows only the scheme's default port"
            ));
        };
        let scheme = match scheme {
            "*" => None,
            other => Some(Scheme::parse(other).ok_or_else(|| {
                format!(
                    "`{text}`: weft grants outgoing `http` and `https` only, not `{other}` ({FORM})"
                )
            })?),
        };
        if rest.contains("{{") {
            return Err(format!(
                "`{text}`: templates (`{{{{ variable }}}}`) are not supported in grants; write the host out"
            ));
        }
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!(
                "`{text}`: a grant is scheme, host and port only, without path, query or user ({FORM})"
            ));
        }
        let (host, port) = split_host_port(rest).map_err(|e| format!("`{text}`: {e} ({FORM})"))?;
        let port = match port {
            None => PortPattern::SchemeDefault,
            Some("*") => PortPattern::Any,
            Some(p) => {
                PortPattern::Port(p.parse::<u16>().ok().filter(|p| *p != 0).ok_or_else(|| {
                    format!("`{text}`: `{p}` is not a port (1 to 65535, or `*` for any)")
                })?)
            }
        };
        let host = if host == "*" {
            HostPattern::Any
        } else if let Some(domain) = host.strip_prefix("*.") {
            if !valid_name(domain) {
                return Err(format!("`{text}`: `{domain}` is not a host name"));
            }
            HostPattern::Subdomains(format!(".{}", domain.to_ascii_lowercase()))
        } else {
            match Destination::parse(host) {
                Destination::Ip(ip) => HostPattern::Ip(ip),
                Destination::Name(name) if valid_name(&name) => HostPattern::Name(name),
                Destination::Name(_) => {
                    return Err(format!("`{text}`: `{host}` is not a host name ({FORM})"));
                }
            }
        };
        Ok(OutboundGrant { scheme, host, port })
    }

    /// Whether a request with this scheme to `host:port` is within the grant (by name:
    /// the addresses it resolves to are checked after resolution).
    pub fn matches(&self, scheme: Scheme, host: &Destination, port: u16) -> bool {
        let scheme_ok = self.scheme.is_none_or(|s| s == scheme);
        let port_ok = match self.port {
            PortPattern::Any => true,
            PortPattern::SchemeDefault => port == scheme.default_port(),
            PortPattern::Port(p) => p == port,
        };
        let host_ok = match (&self.host, host) {
            (HostPattern::Any, _) => true,
            (HostPattern::Subdomains(suffix), Destination::Name(name)) => {
                name.len() > suffix.len() && name.ends_with(suffix.as_str())
            }
            (HostPattern::Name(a), Destination::Name(b)) => a == b,
            (HostPattern::Ip(a), Destination::Ip(b)) => a == b,
            _ => false,
        };
        scheme_ok && port_ok && host_ok
    }

    /// Whether the grant names `ip` itself (an IP literal equal to it, or `localhost` for a
    /// loopback address): only then may it reach a loopback, private or link-local address.
    pub fn names_address(&self, ip: IpAddr) -> bool {
        match &self.host {
            HostPattern::Ip(granted) => *granted == ip,
            HostPattern::Name(name) => name == "localhost" && ip.is_loopback(),
            HostPattern::Any | HostPattern::Subdomains(_) => false,
        }
    }
}

/// Splits `host[:port]`, with IPv6 hosts in brackets.
fn split_host_port(text: &str) -> Result<(&str, Option<&str>), String> {
    if text.is_empty() {
        return Err("no host".into());
    }
    if text.starts_with('[') {
        let end = text.find(']').ok_or("unclosed `[` in an IPv6 address")?;
        let (host, rest) = text.split_at(end + 1);
        return match rest {
            "" => Ok((host, None)),
            _ => match rest.strip_prefix(':') {
                Some(port) => Ok((host, Some(port))),
                None => Err(format!("unexpected `{rest}` after the address")),
            },
        };
    }
    match text.rsplit_once(':') {
        Some((host, _)) if host.contains(':') => {
            Err("write an IPv6 address in brackets, as in `http://[::1]:8080`".into())
        }
        Some((host, port)) => Ok((host, Some(port))),
        None => Ok((text, None)),
    }
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(text: &str) -> OutboundGrant {
        OutboundGrant::parse(text).unwrap_or_else(|e| panic!("{e}"))
    }

    fn allows(g: &str, scheme: &str, host: &str, port: u16) -> bool {
        grant(g).matches(
            Scheme::parse(scheme).unwrap(),
            &Destination::parse(host),
            port,
        )
    }

    #[test]
    fn a_grant_without_a_port_means_the_default_port_only() {
        assert!(allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            443
        ));
        assert!(allows(
            "https://API.example.com/",
            "https",
            "api.EXAMPLE.com.",
            443
        ));
        assert!(!allows(
            "https://api.example.com",
            "https",
            "api.example.com",
            8443
        ));
        assert!(!allows(
            "https://api.example.com",
            "http",
            "api.example.com",
            80
        ));
        assert!(!allows(
            "https://api.example.com",
            "http",
            "api.example.com",
            443
        ));
        assert!(allows("http://localhost:8080", "http", "localhost", 8080));
        assert!(!allows("http://localhost:8080", "http", "localhost", 7070));
        assert!(allows("*://api.example.com", "http", "api.example.com", 80));
        assert!(allows(
            "*://api.example.com",
            "https",
            "api.example.com",
            443
        ));
        assert!(!allows(
            "*://api.example.com",
            "https",
            "api.example.com",
            80
        ));
    }

    #[test]
    fn wildcards() {
        assert!(allows(
            "https://*.example.com",
            "https",
            "a.b.example.com",
            443
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "example.com",
            443
        ));
        assert!(!allows(
            "https://*.example.com",
            "https",
            "badexample.com",
            443
        ));
        assert!(allows("*://*:*", "http", "anything", 1));
        assert!(allows(
            "*://api.example.com:*",
            "https",
            "api.example.com",
            9
        ));
        assert!(allows("http://[::1]:8080", "http", "[::1]", 8080));
        assert!(allows("http://127.0.0.1:*", "http", "127.0.0.1", 7070));
        assert!(!allows("http://127.0.0.1:*", "http", "localhost", 7070));
    }

    #[test]
    fn only_a_named_address_or_localhost_names_an_address() {
        let loopback: IpAddr = "127.0.0.1".parse().unwrap();
        let private: IpAddr = "10.0.0.5".parse().unwrap();
        assert!(grant("http://localhost:*").names_address(loopback));
        assert!(!grant("http://localhost:*").names_address(private));
        assert!(grant("http://10.0.0.5").names_address(private));
        assert!(!grant("*://*:*").names_address(loopback));
        assert!(!grant("https://*.example.com").names_address(private));
        assert!(!grant("https://internal.example.com").names_address(private));
    }

    #[test]
    fn bare_names_and_other_forms_are_refused_with_the_way_to_write_them() {
        let err = OutboundGrant::parse("api.example.com").unwrap_err();
        assert!(err.contains("`https://api.example.com`"), "{err}");
        let err = OutboundGrant::parse("localhost:8080").unwrap_err();
        assert!(err.contains("`http://localhost:8080`"), "{err}");
        let err = OutboundGrant::parse("*").unwrap_err();
        assert!(err.contains("`*://*:*`"), "{err}");
        for bad in [
            "ftp://example.com",
            "https://example.com/path",
            "https://user@example.com",
            "https://example.com:99999",
            "https://example.com:0",
            "https://",
            "https://::1",
            "https://{{ host }}",
            "https://exa mple.com",
        ] {
            assert!(OutboundGrant::parse(bad).is_err(), "{bad} must be refused");
        }
    }
}
