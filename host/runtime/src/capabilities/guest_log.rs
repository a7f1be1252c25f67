//! A guest's stdout and stderr: each line becomes one host log line, prefixed with the
//! component's name. The last lines of stderr are also kept per instance, so a trap can
//! be reported with the guest's own message (a Rust panic's text, for example).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// Longest line kept before it is logged anyway, so a guest cannot grow host memory.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines of stderr kept per instance for failure reports.
const TAIL_LINES: usize = 8;

/// The last lines an instance wrote to stderr.
pub type Tail = Arc<Mutex<VecDeque<String>>>;

/// One of a component's output streams.
#[derive(Debug, Clone)]
pub struct GuestLog {
    component: Arc<str>,
    stream: &'static str,
    tail: Option<Tail>,
}

impl GuestLog {
    /// The stream named `stream` (`stdout` or `stderr`) of `component`.
    pub fn new(component: Arc<str>, stream: &'static str) -> GuestLog {
        GuestLog {
            component,
            stream,
            tail: None,
        }
    }

    /// The same stream, also keeping its last lines in `tail`.
    pub fn keeping_tail(mut self, tail: Tail) -> GuestLog {
        self.tail = Some(tail);
        self
    }
}

/// The kept lines, joined with ` | `.
pub fn tail_text(tail: &Tail) -> String {
    let lines = tail.lock().unwrap_or_else(|e| e.into_inner());
    lines
        .iter()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(" | ")
}

impl IsTerminal for GuestLog {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for GuestLog {
    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(LineWriter {
            log: self.clone(),
            line: Vec::new(),
        })
    }
}

struct LineWriter {
    log: GuestLog,
    line: Vec<u8>,
}

impl LineWriter {
    fn emit(&mut self) {
        if self.line.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        tracing::info!(target: "weft::guest", "[{}] {}: {}", self.log.component, self.log.stream, text);
        if let Some(tail) = &self.log.tail {
            let mut lines = tail.lock().unwrap_or_else(|e| e.into_inner());
            if lines.len() == TAIL_LINES {
                lines.pop_front();
            }
            lines.push_back(text.to_string());
        }
        self.line.clear();
    }
}

impl AsyncWrite for LineWriter {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        for &byte in buf {
            if byte == b'\n' {
                self.emit();
            } else {
                self.line.push(byte);
                if self.line.len() >= MAX_LINE {
                    self.emit();
                }
            }
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        self.emit();
        Poll::Ready(Ok(()))
    }
}

impl Drop for LineWriter {
    fn drop(&mut self) {
        self.emit();
    }
}
