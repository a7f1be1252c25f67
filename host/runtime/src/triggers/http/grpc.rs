//! gRPC requests (content type `application/grpc...`): the host's own answers become
//! gRPC statuses in a trailers-only response instead of HTTP error pages, and the
//! client's `grpc-timeout` shortens the component's deadline.

use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use http::{HeaderMap, HeaderValue, StatusCode, header};

use super::HttpError;

/// Whether the request is a gRPC call.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/grpc"))
}

/// The client's `grpc-timeout` (`<digits><unit>`, at most 8 digits; units H, M, S, m,
/// u, n), if it sent a valid one.
pub fn timeout(headers: &HeaderMap) -> Option<Duration> {
    let value = headers.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// gRPC status codes the host answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
}

impl HttpError {
    /// The gRPC status this error is for a gRPC client.
    pub fn grpc_code(&self) -> Code {
        match self {
            HttpError::NotFound { .. } | HttpError::MethodNotAllowed { .. } => Code::Unimplemented,
            HttpError::PayloadTooLarge { .. } | HttpError::Overloaded { .. } => {
                Code::ResourceExhausted
            }
            HttpError::HostFull => Code::Unavailable,
            HttpError::Deadline { .. } | HttpError::ClientDeadline(_) => Code::DeadlineExceeded,
            HttpError::GuestFailed { .. } => Code::Internal,
            HttpError::BadRequest(_) | HttpError::UpgradeRequired(_) => Code::InvalidArgument,
            HttpError::Forbidden(_) => Code::PermissionDenied,
        }
    }

    /// A trailers-only gRPC response: HTTP 200 with `grpc-status` and `grpc-message`.
    pub fn into_grpc_response(self) -> Response {
        let code = self.grpc_code();
        let message = self.message();
        status_response(code, &message)
    }
}

/// A trailers-only response carrying `code` and `message`.
pub fn status_response(code: Code, message: &str) -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&percent_encode(message)) {
        headers.insert("grpc-message", message);
    }
    response
}

/// The trailers that end a gRPC response whose component failed (or missed its
/// `deadline`) while streaming it.
pub fn failed_trailers(component: &str, deadline: bool) -> hyper::body::Frame<bytes::Bytes> {
    let (code, message) = if deadline {
        (
            Code::DeadlineExceeded,
            format!("component `{component}` did not finish in time"),
        )
    } else {
        (
            Code::Internal,
            format!("component `{component}` failed while streaming the response"),
        )
    };
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(code as u16));
    if let Ok(message) = HeaderValue::from_str(&message) {
        trailers.insert("grpc-message", message);
    }
    hyper::body::Frame::trailers(trailers)
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("grpc-timeout", HeaderValue::from_str(timeout).unwrap());
        h
    }

    #[test]
    fn grpc_timeouts_parse_by_unit_and_bad_ones_are_ignored() {
        assert_eq!(timeout(&headers("250m")), Some(Duration::from_millis(250)));
        assert_eq!(timeout(&headers("2S")), Some(Duration::from_secs(2)));
        assert_eq!(timeout(&headers("1H")), Some(Duration::from_secs(3600)));
        assert_eq!(
            timeout(&headers("99999u")),
            Some(Duration::from_micros(99999))
        );
        for bad in ["", "m", "123456789m", "12x", "-1S", "1.5S"] {
            assert_eq!(timeout(&headers(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn grpc_messages_are_percent_encoded() {
        assert_eq!(percent_encode("50% off: é"), "50%25 off: %C3%A9");
    }
}
