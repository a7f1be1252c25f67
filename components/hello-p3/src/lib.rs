//! The hello component as a `wasi:http@0.3.0` service, written on the `wasip3` crate
//! alone: answers with a greeting naming the path, like `components/hello`, so the two
//! HTTP generations compare on the same work. `?wait=MS` waits that long first (an
//! async guest waiting on I/O: what concurrent reuse overlaps).

use wasip3::http::types::{ErrorCode, Fields, Request, Response};
use wasip3::{wit_bindgen, wit_future, wit_stream};

wasip3::http::service::export!(Hello);

struct Hello;

impl wasip3::exports::http::handler::Guest for Hello {
    async fn handle(request: Request) -> Result<Response, ErrorCode> {
        let path = request.get_path_with_query().unwrap_or_else(|| "/".into());
        if let Some(ms) = path
            .split_once("wait=")
            .and_then(|(_, ms)| ms.split('&').next()?.parse::<u64>().ok())
        {
            wasip3::clocks::monotonic_clock::wait_for(ms * 1_000_000).await;
        }
        let body = format!("Hello from weft! You asked for {path}\n").into_bytes();
        let headers = Fields::from_list(&[
            ("content-type".into(), b"text/plain".to_vec()),
            ("content-length".into(), body.len().to_string().into_bytes()),
        ])
        .map_err(|e| ErrorCode::InternalError(Some(format!("{e:?}"))))?;
        let (mut body_tx, body_rx) = wit_stream::new();
        let (trailers_tx, trailers_rx) = wit_future::new(|| Ok(None));
        let (response, _sent) = Response::new(headers, Some(body_rx), trailers_rx);
        drop(trailers_tx);
        wit_bindgen::spawn(async move {
            body_tx.write_all(body).await;
        });
        Ok(response)
    }
}
