//! A self-signed certificate for `localhost`, and an HTTP client over TLS or plain TCP
//! that speaks the HTTP version it is told to, for the HTTP/2 and gRPC tests.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use weft_runtime::tls::TlsFiles;

/// A certificate for `localhost` written to `dir`: the files, and its PEM for clients.
pub fn self_signed(dir: &Path) -> (TlsFiles, String) {
    let key = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let cert_pem = key.cert.pem();
    let files = TlsFiles {
        cert: dir.join("cert.pem"),
        key: dir.join("key.pem"),
    };
    std::fs::write(&files.cert, &cert_pem).unwrap();
    std::fs::write(&files.key, key.signing_key.serialize_pem()).unwrap();
    (files, cert_pem)
}

/// A TLS connection to `addr` as `localhost`, trusting `cert_pem`, offering `alpn`;
/// the stream and the protocol the server chose.
pub async fn tls_connect(
    addr: SocketAddr,
    cert_pem: &str,
    alpn: &[&str],
) -> (tokio_rustls::client::TlsStream<TcpStream>, Option<String>) {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    roots
        .add(CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap())
        .unwrap();
    let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.as_bytes().to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let stream = connector.connect(name, tcp).await.unwrap();
    let chosen = stream
        .get_ref()
        .1
        .alpn_protocol()
        .map(|p| String::from_utf8_lossy(p).into_owned());
    (stream, chosen)
}

/// GET `path` over `stream` in HTTP/2 (`h2`) or HTTP/1.1: the status and body.
pub async fn get<S>(stream: S, h2: bool, base: &str, path: &str) -> (u16, String)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let io = TokioIo::new(stream);
    let response = if h2 {
        let (mut send, connection) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                .await
                .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get(format!("{base}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(request).await.unwrap()
    } else {
        let (mut send, connection) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(connection);
        let authority = base.split("://").nth(1).unwrap_or(base);
        let request = http::Request::get(path)
            .header(http::header::HOST, authority)
            .body(Empty::<Bytes>::new())
            .unwrap();
        send.send_request(request).await.unwrap()
    };
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}
