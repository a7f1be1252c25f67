//! A guest's stdout and stderr: each line becomes one host log line, prefixed with the
//! component's name. The last lines of stderr are also kept per instance, so a trap can
//! be reported with the guest's own message (a Rust panic's text, for example).
//!
//! A component's log lines (stdout, stderr and `wasi:logging` together, all its
//! instances) draw on one [`LogBudget`]: past it, lines are dropped and counted, and the
//! count is logged with the next line that is let through.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};

/// The trace id of the call an instance is handling, shared with its output streams so
/// their lines carry it (set by the store per call, only while traces are on).
/// The call's span is kept, its id written out only when a line is.
pub type TraceCell = Arc<Mutex<Option<crate::trace::CallTrace>>>;

/// Longest line kept before it is logged anyway, so a guest cannot grow host memory.
pub const MAX_LINE: usize = 16 * 1024;

/// Lines of stderr kept per instance for failure reports.
const TAIL_LINES: usize = 8;

/// Log lines a component may write per second, on average.
pub const LOG_LINES_PER_SECOND: f64 = 200.0;
/// Log lines a component may write at once after a quiet spell.
pub const LOG_LINES_BURST: f64 = 1000.0;
/// Log bytes a component may write per second, on average.
pub const LOG_BYTES_PER_SECOND: f64 = 256.0 * 1024.0;
/// Log bytes a component may write at once after a quiet spell.
pub const LOG_BYTES_BURST: f64 = 1024.0 * 1024.0;

/// How much one component may log: a token bucket of lines and one of bytes, shared by
/// all of its instances and output streams.
#[derive(Debug)]
pub struct LogBudget {
    component: Arc<str>,
    usage: Arc<crate::metrics::Usage>,
    state: Mutex<BudgetState>,
}

#[derive(Debug)]
struct BudgetState {
    lines: f64,
    bytes: f64,
    refilled: std::time::Instant,
    dropped_lines: u64,
    dropped_bytes: u64,
    /// When dropped lines were last reported: at most once a second.
    reported: std::time::Instant,
}

impl LogBudget {
    /// A full budget for `component`, counting the lines it drops in `usage`.
    pub fn new(component: &str, usage: Arc<crate::metrics::Usage>) -> Arc<LogBudget> {
        Arc::new(LogBudget {
            component: component.into(),
            usage,
            state: Mutex::new(BudgetState {
                lines: LOG_LINES_BURST,
                bytes: LOG_BYTES_BURST,
                refilled: std::time::Instant::now(),
                dropped_lines: 0,
                dropped_bytes: 0,
                reported: std::time::Instant::now(),
            }),
        })
    }

    /// Takes a line of `len` bytes from the budget: whether it may be logged. A line let
    /// through after dropped ones first logs how many were dropped (at most once a
    /// second).
    pub fn admit(&self, len: usize) -> bool {
        let len = len as f64;
        let dropped = {
            let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
            let now = std::time::Instant::now();
            let elapsed = now.duration_since(s.refilled).as_secs_f64();
            s.refilled = now;
            s.lines = (s.lines + elapsed * LOG_LINES_PER_SECOND).min(LOG_LINES_BURST);
            s.bytes = (s.bytes + elapsed * LOG_BYTES_PER_SECOND).min(LOG_BYTES_BURST);
            if s.lines < 1.0 || s.bytes < len {
                s.dropped_lines += 1;
                s.dropped_bytes += len as u64;
                self.usage.log_line_dropped();
                return false;
            }
            s.lines -= 1.0;
            s.bytes -= len;
            if s.dropped_lines > 0 && now.duration_since(s.reported).as_secs() >= 1 {
                s.reported = now;
                (
                    std::mem::take(&mut s.dropped_lines),
                    std::mem::take(&mut s.dropped_bytes),
                )
            } else {
                (0, 0)
            }
        };
        if dropped.0 > 0 {
            tracing::warn!(
                target: "weft::guest",
                "[{}] {} log lines ({} bytes) dropped: over the rate limit of {LOG_LINES_PER_SECOND} lines and {} KiB a second",
                self.component,
                dropped.0,
                dropped.1,
                LOG_BYTES_PER_SECOND / 1024.0
            );
        }
        true
    }
}

/// The last lines an instance wrote to stderr.
pub type Tail = Arc<Mutex<VecDeque<String>>>;

/// One of a component's output streams.
#[derive(Debug, Clone)]
pub struct GuestLog {
    component: Arc<str>,
    budget: Arc<LogBudget>,
    stream: &'static str,
    tail: Option<Tail>,
    trace: Option<TraceCell>,
}

impl GuestLog {
    /// The stream named `stream` (`stdout` or `stderr`) of `component`.
    pub fn new(component: Arc<str>, budget: Arc<LogBudget>, stream: &'static str) -> GuestLog {
        GuestLog {
            component,
            budget,
            stream,
            tail: None,
            trace: None,
        }
    }

    /// The same stream, its lines carrying the trace id in `trace`.
    pub fn tracing(mut self, trace: Option<TraceCell>) -> GuestLog {
        self.trace = trace;
        self
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
        if self.log.budget.admit(text.len()) {
            let trace_id = self.log.trace.as_ref().and_then(|cell| {
                let current = cell.lock().unwrap_or_else(|e| e.into_inner());
                current.as_ref().map(|trace| trace.trace_id())
            });
            tracing::info!(
                target: "weft::guest",
                component = %self.log.component,
                trace_id = trace_id.as_deref(),
                "[{}] {}: {}",
                self.log.component,
                self.log.stream,
                text
            );
        }
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
