//! The calculator gRPC service: every call kind, served through `wasi:http` with the
//! SDK's gRPC helpers. Each call runs in its own instance, like any HTTP request.

use weft_sdk::exports::wasi::http::incoming_handler::Guest;
use weft_sdk::grpc::{self, Messages, Replies, Status};
use weft_sdk::wasi::http::types::{IncomingRequest, ResponseOutparam};

mod pb {
    include!(concat!(env!("OUT_DIR"), "/weft.example.calculator.v1.rs"));
}

use pb::{AddRequest, Number, RangeRequest};

struct Calculator;

impl Guest for Calculator {
    fn handle(request: IncomingRequest, out: ResponseOutparam) {
        let method = grpc::method(&request);
        match method.as_str() {
            "/weft.example.calculator.v1.Calculator/Add" => grpc::unary(request, out, add),
            "/weft.example.calculator.v1.Calculator/Range" => {
                grpc::server_streaming(request, out, range)
            }
            "/weft.example.calculator.v1.Calculator/Sum" => {
                grpc::client_streaming(request, out, sum)
            }
            "/weft.example.calculator.v1.Calculator/RunningTotal" => {
                grpc::bidi_streaming(request, out, running_total)
            }
            other => grpc::unimplemented(out, other),
        }
    }
}

fn add(request: AddRequest) -> Result<Number, Status> {
    if request.trap {
        panic!("asked to trap");
    }
    sleep_ms(request.delay_ms);
    let value = request
        .a
        .checked_add(request.b)
        .ok_or_else(|| Status::invalid_argument("the sum overflows a 64-bit integer"))?;
    Ok(Number { value })
}

fn range(request: RangeRequest, replies: &mut Replies<Number>) -> Result<(), Status> {
    if request.to.saturating_sub(request.from) > 10_000 {
        return Err(Status::invalid_argument("at most 10,000 numbers per call"));
    }
    for value in request.from..=request.to {
        if value != request.from {
            sleep_ms(request.interval_ms);
        }
        replies.send(&Number { value })?;
    }
    Ok(())
}

fn sum(numbers: &mut Messages<Number>) -> Result<Number, Status> {
    let mut total: i64 = 0;
    while let Some(n) = numbers.recv()? {
        total = total.wrapping_add(n.value);
    }
    Ok(Number { value: total })
}

fn running_total(
    numbers: &mut Messages<Number>,
    replies: &mut Replies<Number>,
) -> Result<(), Status> {
    let mut total: i64 = 0;
    while let Some(n) = numbers.recv()? {
        total = total.wrapping_add(n.value);
        replies.send(&Number { value: total })?;
    }
    Ok(())
}

fn sleep_ms(ms: u32) {
    if ms > 0 {
        weft_sdk::wasi::clocks::monotonic_clock::subscribe_duration(u64::from(ms) * 1_000_000)
            .block();
    }
}

weft_sdk::export!(Calculator);
