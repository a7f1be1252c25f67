//! The hello component: answers every request with a greeting naming the path.

use weft_sdk::exports::wasi::http::incoming_handler::Guest;
use weft_sdk::http::{path, respond};
use weft_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let body = format!("Hello from weft! You asked for {}\n", path(&request));
        respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

weft_sdk::export!(Hello);
