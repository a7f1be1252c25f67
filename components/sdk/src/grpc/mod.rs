//! gRPC services over `wasi:http`: message framing, statuses in trailers, and one
//! helper per call kind, so a service is written against prost types.
//!
//! ```ignore
//! fn handle(request: IncomingRequest, out: ResponseOutparam) {
//!     match grpc::method(&request).as_str() {
//!         "/calc.v1.Calc/Add" => grpc::unary(request, out, |r: AddRequest| Ok(Number { value: r.a + r.b })),
//!         method => grpc::unimplemented(out, method),
//!     }
//! }
//! ```
//!
//! Streams are full duplex: a bidirectional handler's replies go out while the client is
//! still sending. Messages are limited to [`MAX_MESSAGE_BYTES`] (as gRPC's default);
//! compressed messages are refused with `UNIMPLEMENTED`.

use prost::Message;

#[cfg(feature = "grpc-p3")]
pub mod p3;

use crate::wasi::http::types::{
    Fields, IncomingBody, IncomingRequest, OutgoingBody, OutgoingResponse, ResponseOutparam,
};
use crate::wasi::io::streams::{InputStream, OutputStream, StreamError};

/// The largest message read or written, as gRPC's default (4 MiB).
pub const MAX_MESSAGE_BYTES: usize = 4 * 1024 * 1024;

/// gRPC status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(missing_docs)]
pub enum Code {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

/// A call's outcome other than OK: a code and a message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// The gRPC code.
    pub code: Code,
    /// Human-readable detail, sent percent-encoded in `grpc-message`.
    pub message: String,
}

impl Status {
    /// A status with `code` and `message`.
    pub fn new(code: Code, message: impl Into<String>) -> Status {
        Status {
            code,
            message: message.into(),
        }
    }

    /// `INVALID_ARGUMENT`.
    pub fn invalid_argument(message: impl Into<String>) -> Status {
        Status::new(Code::InvalidArgument, message)
    }

    /// `INTERNAL`.
    pub fn internal(message: impl Into<String>) -> Status {
        Status::new(Code::Internal, message)
    }
}

/// The method a call is for: its path, `/package.Service/Method`.
pub fn method(request: &IncomingRequest) -> String {
    request.path_with_query().unwrap_or_default()
}

/// The messages a client sends, read one at a time as they arrive.
pub struct Messages<T> {
    stream: InputStream,
    _body: IncomingBody,
    frames: Decoder<T>,
}

impl<T: Message + Default> Messages<T> {
    fn of(request: IncomingRequest) -> Result<Messages<T>, Status> {
        let body = request
            .consume()
            .map_err(|()| Status::internal("request body already consumed"))?;
        let stream = body
            .stream()
            .map_err(|()| Status::internal("request body stream already taken"))?;
        Ok(Messages {
            stream,
            _body: body,
            frames: Decoder::default(),
        })
    }

    /// The next message; `Ok(None)` once the client has finished sending.
    pub fn recv(&mut self) -> Result<Option<T>, Status> {
        loop {
            if let Some(next) = self.frames.decode()? {
                return Ok(next);
            }
            match self.stream.blocking_read(64 * 1024) {
                Ok(chunk) => self.frames.push(&chunk),
                Err(StreamError::Closed) => self.frames.end(),
                Err(e) => return Err(Status::internal(format!("reading the request: {e:?}"))),
            }
        }
    }
}

/// Length-prefixed gRPC messages, decoded as their bytes arrive, in any chunks.
#[derive(Debug)]
pub struct Decoder<T> {
    buffer: Vec<u8>,
    ended: bool,
    _type: std::marker::PhantomData<T>,
}

impl<T> Default for Decoder<T> {
    fn default() -> Self {
        Decoder {
            buffer: Vec::new(),
            ended: false,
            _type: std::marker::PhantomData,
        }
    }
}

impl<T: Message + Default> Decoder<T> {
    /// Adds bytes as they arrive.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buffer.extend_from_slice(bytes);
    }

    /// The request has ended: no more bytes come.
    pub fn end(&mut self) {
        self.ended = true;
    }

    /// `Some(Some(message))` when a whole message is buffered, `Some(None)` once the
    /// request has ended cleanly after its last message, `None` while more bytes are
    /// needed.
    pub fn decode(&mut self) -> Result<Option<Option<T>>, Status> {
        if let Some(message) = self.take_frame()? {
            return T::decode(message.as_slice())
                .map(|m| Some(Some(m)))
                .map_err(|e| Status::invalid_argument(format!("malformed message: {e}")));
        }
        match (self.ended, self.buffer.is_empty()) {
            (false, _) => Ok(None),
            (true, true) => Ok(Some(None)),
            (true, false) => Err(Status::invalid_argument(
                "the request ended inside a message",
            )),
        }
    }

    /// One whole frame from the buffer, if it holds one.
    fn take_frame(&mut self) -> Result<Option<Vec<u8>>, Status> {
        if self.buffer.len() < 5 {
            return Ok(None);
        }
        if self.buffer[0] != 0 {
            return Err(Status::new(
                Code::Unimplemented,
                "compressed messages are not supported",
            ));
        }
        let len = u32::from_be_bytes([
            self.buffer[1],
            self.buffer[2],
            self.buffer[3],
            self.buffer[4],
        ]) as usize;
        if len > MAX_MESSAGE_BYTES {
            return Err(Status::new(
                Code::ResourceExhausted,
                format!("a message of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"),
            ));
        }
        if self.buffer.len() < 5 + len {
            return Ok(None);
        }
        let message = self.buffer[5..5 + len].to_vec();
        self.buffer.drain(..5 + len);
        Ok(Some(message))
    }
}

/// `message` as one length-prefixed gRPC frame (uncompressed).
pub fn encode<T: Message>(message: &T) -> Result<Vec<u8>, Status> {
    let len = message.encoded_len();
    if len > MAX_MESSAGE_BYTES {
        return Err(Status::new(
            Code::ResourceExhausted,
            format!("a reply of {len} bytes exceeds the limit of {MAX_MESSAGE_BYTES}"),
        ));
    }
    let mut frame = Vec::with_capacity(5 + len);
    frame.push(0);
    frame.extend_from_slice(&(len as u32).to_be_bytes());
    message
        .encode(&mut frame)
        .map_err(|e| Status::internal(format!("encoding a reply: {e}")))?;
    Ok(frame)
}

/// Where a handler sends its replies; each goes out at once. The response head goes
/// with the first reply (or the status), so a call that fails before replying is
/// answered by the host if the component traps or misses its deadline.
pub struct Replies<T> {
    out: Option<ResponseOutparam>,
    stream: Option<OutputStream>,
    body: Option<OutgoingBody>,
    _type: std::marker::PhantomData<T>,
}

impl<T: Message> Replies<T> {
    fn new(out: ResponseOutparam) -> Replies<T> {
        Replies {
            out: Some(out),
            stream: None,
            body: None,
            _type: std::marker::PhantomData,
        }
    }

    /// Sends the response head, if not yet sent.
    fn open(&mut self) {
        if let Some(out) = self.out.take() {
            let response = OutgoingResponse::new(grpc_headers());
            let body = response.body().ok();
            ResponseOutparam::set(out, Ok(response));
            self.stream = body.as_ref().and_then(|b| b.write().ok());
            self.body = body;
        }
    }

    /// Sends one message; fails if the client has gone.
    pub fn send(&mut self, message: &T) -> Result<(), Status> {
        self.open();
        let frame = encode(message)?;
        let stream = self
            .stream
            .as_ref()
            .ok_or_else(|| Status::internal("the response body is gone"))?;
        if crate::http::write_all(stream, &frame) {
            Ok(())
        } else {
            Err(Status::new(Code::Cancelled, "the client went away"))
        }
    }

    /// Ends the response with `status` in its trailers (OK when `Ok`).
    fn finish(mut self, status: Result<(), Status>) {
        self.open();
        drop(self.stream.take());
        if let Some(body) = self.body.take() {
            let _ = OutgoingBody::finish(body, Some(status_fields(&status)));
        }
    }
}

/// A unary call: one request message, one reply.
pub fn unary<Req, Rep>(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Req) -> Result<Rep, Status>,
) where
    Req: Message + Default,
    Rep: Message,
{
    serve(request, out, |messages: &mut Messages<Req>, replies| {
        let reply = handler(single(messages)?)?;
        replies.send(&reply)
    })
}

/// A server-streaming call: one request message, any number of replies.
pub fn server_streaming<Req, Rep>(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(Req, &mut Replies<Rep>) -> Result<(), Status>,
) where
    Req: Message + Default,
    Rep: Message,
{
    serve(request, out, |messages: &mut Messages<Req>, replies| {
        handler(single(messages)?, replies)
    })
}

/// A client-streaming call: any number of request messages, one reply.
pub fn client_streaming<Req, Rep>(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(&mut Messages<Req>) -> Result<Rep, Status>,
) where
    Req: Message + Default,
    Rep: Message,
{
    serve(request, out, |messages, replies| {
        let reply = handler(messages)?;
        replies.send(&reply)
    })
}

/// A bidirectional-streaming call: messages both ways, replies sent as they are made.
/// The response head goes out at once, for clients that wait for it before sending.
pub fn bidi_streaming<Req, Rep>(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(&mut Messages<Req>, &mut Replies<Rep>) -> Result<(), Status>,
) where
    Req: Message + Default,
    Rep: Message,
{
    serve(request, out, |messages, replies| {
        replies.open();
        handler(messages, replies)
    })
}

/// Answers a call for a method the service does not have.
pub fn unimplemented(out: ResponseOutparam, method: &str) {
    let response = OutgoingResponse::new(grpc_headers());
    let status = Err(Status::new(
        Code::Unimplemented,
        format!("no method {method}"),
    ));
    if let Ok(body) = response.body() {
        ResponseOutparam::set(out, Ok(response));
        let _ = OutgoingBody::finish(body, Some(status_fields(&status)));
    }
}

/// Runs `handler` and ends the response with its status.
fn serve<Req, Rep>(
    request: IncomingRequest,
    out: ResponseOutparam,
    handler: impl FnOnce(&mut Messages<Req>, &mut Replies<Rep>) -> Result<(), Status>,
) where
    Req: Message + Default,
    Rep: Message,
{
    let mut replies = Replies::new(out);
    let status =
        Messages::of(request).and_then(|mut messages| handler(&mut messages, &mut replies));
    replies.finish(status);
}

/// The one message of a unary or server-streaming call.
fn single<T: Message + Default>(messages: &mut Messages<T>) -> Result<T, Status> {
    let message = messages
        .recv()?
        .ok_or_else(|| Status::invalid_argument("the call carries no request message"))?;
    if messages.recv()?.is_some() {
        return Err(Status::invalid_argument(
            "the call carries more than one request message",
        ));
    }
    Ok(message)
}

// Each made in one call into the host (rather than `new` and an `append` per field).
fn grpc_headers() -> Fields {
    Fields::from_list(&[("content-type".into(), b"application/grpc".to_vec())])
        .unwrap_or_else(|_| Fields::new())
}

fn status_fields(status: &Result<(), Status>) -> Fields {
    let entries: Vec<(String, Vec<u8>)> = status_trailers(status)
        .into_iter()
        .map(|(name, value)| (name.to_string(), value))
        .collect();
    Fields::from_list(&entries).unwrap_or_else(|_| Fields::new())
}

/// The trailers that carry `status`: `grpc-status`, and `grpc-message` if it has one.
pub fn status_trailers(status: &Result<(), Status>) -> Vec<(&'static str, Vec<u8>)> {
    let (code, message) = match status {
        Ok(()) => (Code::Ok, ""),
        Err(status) => (status.code, status.message.as_str()),
    };
    let mut trailers = vec![("grpc-status", (code as u8).to_string().into_bytes())];
    if !message.is_empty() {
        trailers.push(("grpc-message", percent_encode(message).into_bytes()));
    }
    trailers
}

/// `grpc-message` encoding: bytes outside printable ASCII, and `%`, as `%XX`.
fn percent_encode(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
