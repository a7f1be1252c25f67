//! Helpers over `wasi:http/types` for handlers that buffer bodies.

use crate::wasi::http::types::{
    Fields, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::wasi::io::streams::OutputStream;

/// The request's path and query, `/` when absent.
pub fn path(request: &IncomingRequest) -> String {
    request.path_with_query().unwrap_or_else(|| "/".to_string())
}

/// Reads the whole request body into memory.
pub fn read_body(request: &IncomingRequest) -> Result<Vec<u8>, String> {
    let body = request
        .consume()
        .map_err(|()| "request body already consumed")?;
    let stream = body
        .stream()
        .map_err(|()| "request body stream already taken")?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            // The first chunk is often the whole body: keep it rather than copy it.
            Ok(chunk) if bytes.is_empty() => bytes = chunk,
            Ok(chunk) => bytes.extend_from_slice(&chunk),
            Err(crate::wasi::io::streams::StreamError::Closed) => break,
            Err(e) => return Err(format!("reading request body: {e:?}")),
        }
    }
    Ok(bytes)
}

/// Sends a complete response with the given status, headers and body.
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let fields = Fields::new();
    for (name, value) in headers {
        // A header the host forbids is dropped rather than failing the response.
        let _ = fields.append(name, value.as_bytes());
    }
    let response = OutgoingResponse::new(fields);
    let _ = response.set_status_code(status);
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        write_all(&stream, body);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Writes `bytes` to a body's stream, in chunks the host accepts. `OutgoingBody::write`
/// hands out its stream only once: take it once, write many times, drop it before
/// `OutgoingBody::finish`.
pub fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}
