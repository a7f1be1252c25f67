//! gRPC services over `wasi:http@0.3.0` (the `wasi:http/service` world, with the
//! `wasip3` crate): the same framing and statuses as the 0.2 helpers, as async
//! functions. A unary call answers once its handler returns (so a trap or a missed
//! deadline before that is answered by the host with `INTERNAL` or
//! `DEADLINE_EXCEEDED`); a streaming call's response head goes out at once and its
//! replies as they are sent, while the request is still arriving.
//!
//! ```ignore
//! impl wasip3::exports::http::handler::Guest for Calculator {
//!     async fn handle(request: Request) -> Result<Response, ErrorCode> {
//!         match grpc::method(&request).as_str() {
//!             "/calc.v1.Calc/Add" => p3::unary(request, async |r: AddRequest| Ok(Number { value: r.a + r.b })).await,
//!             "/calc.v1.Calc/Total" => p3::streaming(request, running_total),
//!             method => p3::unimplemented(method),
//!         }
//!     }
//! }
//! ```

use prost::Message;
use wasip3::http::types::{ErrorCode, Fields, Request, Response, Trailers};
use wasip3::wit_bindgen::{
    self, FutureReader, FutureWriter, StreamReader, StreamResult, StreamWriter,
};
use wasip3::{wit_future, wit_stream};

use super::{Decoder, Status, encode, status_trailers};

/// The method a call is for: its path, `/package.Service/Method`.
pub fn method(request: &Request) -> String {
    request.get_path_with_query().unwrap_or_default()
}

/// The messages a client sends, read one at a time as they arrive.
pub struct Messages<T> {
    body: StreamReader<u8>,
    _trailers: FutureReader<Result<Option<Trailers>, ErrorCode>>,
    frames: Decoder<T>,
}

impl<T: Message + Default> Messages<T> {
    fn of(request: Request) -> Messages<T> {
        let (done, consumed) = wit_future::new(|| Ok(()));
        drop(done);
        let (body, trailers) = Request::consume_body(request, consumed);
        Messages {
            body,
            _trailers: trailers,
            frames: Decoder::default(),
        }
    }

    /// The next message; `Ok(None)` once the client has finished sending.
    pub async fn recv(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(next) = self.frames.decode()? {
                return Ok(next);
            }
            let (result, chunk) = self.body.read(Vec::with_capacity(64 * 1024)).await;
            match result {
                StreamResult::Complete(_) => self.frames.push(&chunk),
                StreamResult::Dropped | StreamResult::Cancelled => self.frames.end(),
            }
        }
    }

    /// The one message of a unary or server-streaming call.
    pub async fn single(&mut self) -> Result<T, Status> {
        let message = self
            .recv()
            .await?
            .ok_or_else(|| Status::invalid_argument("the call carries no request message"))?;
        if self.recv().await?.is_some() {
            return Err(Status::invalid_argument(
                "the call carries more than one request message",
            ));
        }
        Ok(message)
    }
}

/// Where a streaming handler sends its replies; each goes out at once.
pub struct Replies<T> {
    body: StreamWriter<u8>,
    _type: std::marker::PhantomData<T>,
}

impl<T: Message> Replies<T> {
    /// Sends one message; fails if the client has gone.
    pub async fn send(&mut self, message: &T) -> Result<(), Status> {
        let frame = encode(message)?;
        if self.body.write_all(frame).await.is_empty() {
            Ok(())
        } else {
            Err(Status::new(super::Code::Cancelled, "the client went away"))
        }
    }
}

/// A unary call: one request message, one reply, answered when `handler` returns.
pub async fn unary<Req, Rep>(
    request: Request,
    handler: impl AsyncFnOnce(Req) -> Result<Rep, Status>,
) -> Result<Response, ErrorCode>
where
    Req: Message + Default,
    Rep: Message,
{
    let mut messages = Messages::<Req>::of(request);
    let reply = match messages.single().await {
        Ok(request) => handler(request).await.and_then(|reply| encode(&reply)),
        Err(status) => Err(status),
    };
    let (frame, status) = match reply {
        Ok(frame) => (frame, Ok(())),
        Err(status) => (Vec::new(), Err(status)),
    };
    let (response, mut body, trailers) = response()?;
    wit_bindgen::spawn(async move {
        if !frame.is_empty() {
            body.write_all(frame).await;
        }
        drop(body);
        finish(trailers, &status).await;
    });
    Ok(response)
}

/// A streaming call (client, server or bidirectional): the response head goes out at
/// once, `handler` reads messages and sends replies as they come, and its result
/// becomes the status in the trailers. A server-streaming handler starts with
/// [`Messages::single`].
pub fn streaming<Req, Rep, F>(request: Request, handler: F) -> Result<Response, ErrorCode>
where
    Req: Message + Default + 'static,
    Rep: Message + 'static,
    F: AsyncFnOnce(&mut Messages<Req>, &mut Replies<Rep>) -> Result<(), Status> + 'static,
{
    let mut messages = Messages::<Req>::of(request);
    let (response, body, trailers) = response()?;
    wit_bindgen::spawn(async move {
        let mut replies = Replies {
            body,
            _type: std::marker::PhantomData,
        };
        let status = handler(&mut messages, &mut replies).await;
        drop(replies);
        drop(messages);
        finish(trailers, &status).await;
    });
    Ok(response)
}

/// Answers a call for a method the service does not have.
pub fn unimplemented(method: &str) -> Result<Response, ErrorCode> {
    let status = Err(Status::new(
        super::Code::Unimplemented,
        format!("no method {method}"),
    ));
    let (response, body, trailers) = response()?;
    drop(body);
    wit_bindgen::spawn(async move { finish(trailers, &status).await });
    Ok(response)
}

type TrailersWriter = FutureWriter<Result<Option<Trailers>, ErrorCode>>;

/// A gRPC response, its body's writer and its trailers' writer.
fn response() -> Result<(Response, StreamWriter<u8>, TrailersWriter), ErrorCode> {
    let headers = Fields::from_list(&[("content-type".into(), b"application/grpc".to_vec())])
        .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
    let (body, contents) = wit_stream::new();
    let (trailers, trailers_rx) = wit_future::new(|| Ok(None));
    let (response, _sent) = Response::new(headers, Some(contents), trailers_rx);
    Ok((response, body, trailers))
}

/// Ends the response with `status` in its trailers.
async fn finish(trailers: TrailersWriter, status: &Result<(), Status>) {
    let fields = Fields::new();
    for (name, value) in status_trailers(status) {
        let _ = fields.append(name, &value);
    }
    let _ = trailers.write(Ok(Some(fields))).await;
}
