//! An HTTP server written with `wstd` 0.6 (`#[wstd::http_server]`), the async std that
//! wasmCloud v2's Rust templates use: a `wasi:http/proxy` (0.2) component.
//!
//! - `GET /wstd/hello`: a greeting with the request's path.
//! - `POST /wstd/echo`: the request body back.
//! - `GET /wstd/slow`: answers after 100 ms (wstd's timer).

use wstd::http::body::Body;
use wstd::http::{Error, Request, Response, StatusCode};

#[wstd::http_server]
async fn main(request: Request<Body>) -> Result<Response<Body>, Error> {
    let path = request.uri().path().to_string();
    match path.as_str() {
        "/wstd/hello" => Ok(Response::new(format!("Hello from wstd at {path}").into())),
        "/wstd/echo" => {
            let mut body = request.into_body();
            let bytes = body.contents().await?.to_vec();
            Ok(Response::new(bytes.into()))
        }
        "/wstd/slow" => {
            wstd::task::sleep(wstd::time::Duration::from_millis(100)).await;
            Ok(Response::new("slow".to_string().into()))
        }
        _ => Ok(Response::builder()
            .status(StatusCode::NOT_FOUND)
            .body(format!("no route {path}").into())?),
    }
}
