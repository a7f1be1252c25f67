//! The calculator gRPC service on `wasi:http@0.3.0`: the same four methods as
//! `examples/grpc/calculator` (0.2), written as async functions with the SDK's
//! `grpc::p3` helpers. Each call runs in its own instance, or several at once in one
//! with `max_concurrent_per_instance`.

use wasip3::clocks::monotonic_clock;
use wasip3::http::types::{ErrorCode, Request, Response};
use weft_sdk::grpc::Status;
use weft_sdk::grpc::p3::{self, Messages, Replies};

mod pb {
    include!(concat!(env!("OUT_DIR"), "/weft.example.calculator.v1.rs"));
}

use pb::{AddRequest, Number, RangeRequest};

wasip3::http::service::export!(Calculator);

struct Calculator;

impl wasip3::exports::http::handler::Guest for Calculator {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let method = p3::method(&request);
        match method.as_str() {
            "/weft.example.calculator.v1.Calculator/Add" => p3::unary(request, add).await,
            "/weft.example.calculator.v1.Calculator/Range" => p3::streaming(request, range),
            "/weft.example.calculator.v1.Calculator/Sum" => p3::streaming(request, sum),
            "/weft.example.calculator.v1.Calculator/RunningTotal" => {
                p3::streaming(request, running_total)
            }
            other => p3::unimplemented(other),
        }
    }
}

async fn add(request: AddRequest) -> Result<Number, Status> {
    if request.trap {
        panic!("asked to trap");
    }
    sleep_ms(request.delay_ms).await;
    let value = request
        .a
        .checked_add(request.b)
        .ok_or_else(|| Status::invalid_argument("the sum overflows a 64-bit integer"))?;
    Ok(Number { value })
}

async fn range(
    messages: &mut Messages<RangeRequest>,
    replies: &mut Replies<Number>,
) -> Result<(), Status> {
    let request = messages.single().await?;
    if request.to.saturating_sub(request.from) > 10_000 {
        return Err(Status::invalid_argument("at most 10,000 numbers per call"));
    }
    for value in request.from..=request.to {
        if value != request.from {
            sleep_ms(request.interval_ms).await;
        }
        replies.send(&Number { value }).await?;
    }
    Ok(())
}

async fn sum(numbers: &mut Messages<Number>, replies: &mut Replies<Number>) -> Result<(), Status> {
    let mut total: i64 = 0;
    while let Some(n) = numbers.recv().await? {
        total = total.wrapping_add(n.value);
    }
    replies.send(&Number { value: total }).await
}

async fn running_total(
    numbers: &mut Messages<Number>,
    replies: &mut Replies<Number>,
) -> Result<(), Status> {
    let mut total: i64 = 0;
    while let Some(n) = numbers.recv().await? {
        total = total.wrapping_add(n.value);
        replies.send(&Number { value: total }).await?;
    }
    Ok(())
}

async fn sleep_ms(ms: u32) {
    if ms > 0 {
        monotonic_clock::wait_for(u64::from(ms) * 1_000_000).await;
    }
}
