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
///
/// Every call into the host costs about as much as the guest's own work for a small
/// response, so this makes as few as it can: the headers in one call, no status call
/// for 200 (a new response's status).
pub fn respond(out: ResponseOutparam, status: u16, headers: &[(&str, &str)], body: &[u8]) {
    let response = OutgoingResponse::new(fields(headers));
    if status != 200 {
        let _ = response.set_status_code(status);
    }
    let Ok(outgoing) = response.body() else {
        return;
    };
    ResponseOutparam::set(out, Ok(response));
    if let Ok(stream) = outgoing.write() {
        write_all(&stream, body);
    }
    let _ = OutgoingBody::finish(outgoing, None);
}

/// Response headers, in one call to the host. If the host refuses the list (a header
/// it forbids, say), they are added one by one and the refused ones are dropped rather
/// than failing the response.
fn fields(headers: &[(&str, &str)]) -> Fields {
    let entries: Vec<(String, Vec<u8>)> = headers
        .iter()
        .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
        .collect();
    Fields::from_list(&entries).unwrap_or_else(|_| {
        let fields = Fields::new();
        for (name, value) in headers {
            let _ = fields.append(name, value.as_bytes());
        }
        fields
    })
}

/// Writes `bytes` to a body's stream, in chunks the host accepts. `OutgoingBody::write`
/// hands out its stream only once: take it once, write many times, drop it before
/// `OutgoingBody::finish`.
pub fn write_all(stream: &OutputStream, bytes: &[u8]) -> bool {
    bytes
        .chunks(4096)
        .all(|chunk| stream.blocking_write_and_flush(chunk).is_ok())
}
