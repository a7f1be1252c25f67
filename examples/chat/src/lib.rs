//! The chat: `GET /chat` serves the page; the page's WebSocket (`/chat/ws`, a route
//! with `websocket = true`) sends its events here as messages. A new connection joins
//! the `chat` group; each text it sends goes to every member of the group, on every
//! host. No instance is held per connection: each event is one call.
//!
//! Commands (for the tests): `/echo TEXT` answers the sender alone, `/flood N SIZE`
//! sends the sender N messages of SIZE bytes, `/bye` closes the sender's connection,
//! `/whoami` answers the connection's subject, `/to SUBJECT TEXT` publishes TEXT to any
//! subject (and answers `denied: ...` if the host refuses).
//! Binary frames come back to the sender as binary frames.

wit_bindgen::generate!({
    path: "../../wit",
    world: "weft:platform/service",
    with: {
        "wasi:http/types@0.2.12": weft_sdk::wasi::http::types,
        "wasi:io/error@0.2.12": weft_sdk::wasi::io::error,
        "wasi:io/poll@0.2.12": weft_sdk::wasi::io::poll,
        "wasi:io/streams@0.2.12": weft_sdk::wasi::io::streams,
        "wasi:clocks/monotonic-clock@0.2.12": weft_sdk::wasi::clocks::monotonic_clock,
    },
    generate_all,
});

use exports::wasi::http::incoming_handler::Guest as HttpGuest;
use exports::wasmcloud::messaging::handler::Guest as MessageGuest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;
use weft_sdk::http::respond;
use weft_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

/// The group every connection joins, and its subject.
const ROOM: &str = "chat";
const ROOM_SUBJECT: &str = "ws.group.chat";

struct Chat;

impl HttpGuest for Chat {
    fn handle(_request: IncomingRequest, out: ResponseOutparam) {
        let page = include_str!("page.html");
        respond(
            out,
            200,
            &[("content-type", "text/html; charset=utf-8")],
            page.as_bytes(),
        );
    }
}

fn publish(subject: &str, body: impl Into<Vec<u8>>) -> Result<(), String> {
    consumer::publish(&BrokerMessage {
        subject: subject.to_string(),
        body: body.into(),
        reply_to: None,
    })
}

impl MessageGuest for Chat {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        // The connection's own subject: where an answer to it goes.
        let me = msg
            .reply_to
            .clone()
            .ok_or("a websocket event has a reply_to")?;
        let event = msg.subject.rsplit('.').next().unwrap_or_default();
        match event {
            "open" => {
                publish(&format!("{me}.join"), ROOM)?;
                publish(&me, "* welcome to the chat")
            }
            "text" => {
                let text = String::from_utf8_lossy(&msg.body).into_owned();
                if let Some(echo) = text.strip_prefix("/echo ") {
                    publish(&me, echo)
                } else if let Some(args) = text.strip_prefix("/flood ") {
                    let mut args = args
                        .split_whitespace()
                        .map(|a| a.parse::<usize>().unwrap_or(0));
                    let (n, size) = (args.next().unwrap_or(0), args.next().unwrap_or(0));
                    let chunk = "x".repeat(size);
                    for _ in 0..n {
                        publish(&me, chunk.as_str())?;
                    }
                    Ok(())
                } else if text == "/whoami" {
                    publish(&me, me.as_str())
                } else if let Some(rest) = text.strip_prefix("/to ") {
                    let (subject, body) = rest.split_once(' ').unwrap_or((rest, ""));
                    match publish(subject, body) {
                        Ok(()) => Ok(()),
                        Err(e) => publish(&me, format!("denied: {e}")),
                    }
                } else if text == "/bye" {
                    publish(&format!("{me}.close"), "bye")
                } else {
                    publish(ROOM_SUBJECT, text)
                }
            }
            "binary" => publish(&format!("{me}.binary"), msg.body),
            "close" => Ok(()),
            other => Err(format!("unknown event `{other}`")),
        }
    }
}

export!(Chat);
