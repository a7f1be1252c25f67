//! The hello component: answers `GET` with a greeting naming the path, and echoes the
//! body of any other request back with its content type (the benchmarks' JSON echo).
//! The greeting comes from the manifest's `config` (`GREETING`), read as an environment
//! variable.

use weft_sdk::exports::wasi::http::incoming_handler::Guest;
use weft_sdk::http::{path, read_body, respond};
use weft_sdk::wasi::http::types::{IncomingRequest, Method, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        if matches!(request.method(), Method::Get | Method::Head) {
            let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
            let body = format!("{greeting} from weft! You asked for {}\n", path(&request));
            respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
            return;
        }
        let content_type = request
            .headers()
            .get("content-type")
            .into_iter()
            .next()
            .and_then(|v| String::from_utf8(v).ok())
            .unwrap_or_else(|| "application/octet-stream".to_string());
        match read_body(&request) {
            Ok(body) => respond(out, 200, &[("content-type", &content_type)], &body),
            Err(e) => respond(out, 400, &[("content-type", "text/plain")], e.as_bytes()),
        }
    }
}

weft_sdk::export!(Hello);
