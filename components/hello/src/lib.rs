//! The hello component: answers every request with a greeting naming the path. The
//! greeting comes from the manifest's `config` (`GREETING`), read as an environment variable.

use weft_sdk::exports::wasi::http::incoming_handler::Guest;
use weft_sdk::http::{path, respond};
use weft_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

struct Hello;

impl Guest for Hello {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let greeting = std::env::var("GREETING").unwrap_or_else(|_| "Hello".to_string());
        let body = format!("{greeting} from weft! You asked for {}\n", path(&request));
        respond(out, 200, &[("content-type", "text/plain")], body.as_bytes());
    }
}

weft_sdk::export!(Hello);
