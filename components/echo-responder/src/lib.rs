//! The messaging benchmark's component (`weft:platform/message-handler`): answers every
//! message that has a reply subject with `-:` and the message body, exactly what the
//! bench's native responder does. A message without one (the durable benchmark's) it
//! answers on `done.SUBJECT` with the body, as the native consumer does.

wit_bindgen::generate!({
    path: "../../wit",
    world: "weft:platform/message-handler",
    generate_all,
});

use exports::wasmcloud::messaging::handler::Guest;
use wasmcloud::messaging::consumer;
use wasmcloud::messaging::types::BrokerMessage;

struct EchoResponder;

impl Guest for EchoResponder {
    fn handle_message(msg: BrokerMessage) -> Result<(), String> {
        let Some(subject) = msg.reply_to else {
            return consumer::publish(&BrokerMessage {
                subject: format!("done.{}", msg.subject),
                body: msg.body,
                reply_to: None,
            });
        };
        let mut body = b"-:".to_vec();
        body.extend_from_slice(&msg.body);
        consumer::publish(&BrokerMessage {
            subject,
            body,
            reply_to: None,
        })
    }
}

export!(EchoResponder);
