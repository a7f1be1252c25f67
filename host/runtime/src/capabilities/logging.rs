//! Host capability `wasi:logging/logging@0.1.0-draft`: a guest's log messages become host
//! log lines at their level, prefixed with the component's name (the line's `version`
//! field carries its version), like its stdout and
//! stderr ([`super::guest_log`]). Always granted, and bounded: a message or context is
//! cut at a fixed length, and control characters (newlines included) become spaces, so
//! one call is one log line and a guest cannot forge the lines of another.

use std::sync::Arc;

use wasmtime::component::{HasData, Linker};

use super::guest_log::{LogBudget, MAX_LINE, TraceCell};

mod bindings {
    wasmtime::component::bindgen!({
        path: "../../wit",
        world: "wasi:logging/imports",
    });
}

use bindings::wasi::logging::logging::{self, Level};

/// Longest context kept, in bytes.
pub const MAX_CONTEXT: usize = 256;

/// What a component may log: everything, under its own name.
#[derive(Debug, Clone)]
pub struct LoggingGrant {
    component: Arc<str>,
    version: Arc<str>,
    budget: Arc<LogBudget>,
    trace: Option<TraceCell>,
}

impl LoggingGrant {
    /// The grant of one instance, its lines carrying the trace id in `trace`.
    pub fn tracing(&self, trace: Option<TraceCell>) -> LoggingGrant {
        LoggingGrant {
            trace,
            ..self.clone()
        }
    }
}

/// The logging grant of `version` of component `name`, drawing on its log `budget`.
pub fn grant(name: &str, version: &str, budget: &Arc<LogBudget>) -> LoggingGrant {
    LoggingGrant {
        component: name.into(),
        version: version.into(),
        budget: budget.clone(),
        trace: None,
    }
}

struct Logging;

impl HasData for Logging {
    type Data<'a> = &'a mut LoggingGrant;
}

/// Adds `wasi:logging/logging` to the linker; `get` gives the grant in a store's data.
pub fn add_to_linker<T: Send + 'static>(
    linker: &mut Linker<T>,
    get: fn(&mut T) -> &mut LoggingGrant,
) -> wasmtime::Result<()> {
    logging::add_to_linker::<T, Logging>(linker, get)
}

/// `text` cut at `max` bytes (on a character boundary), control characters as spaces.
fn one_line(text: &str, max: usize) -> String {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let cut = &text[..end];
    let line: String = cut
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if end < text.len() {
        format!("{line}... ({} bytes cut)", text.len() - end)
    } else {
        line
    }
}

impl logging::Host for LoggingGrant {
    fn log(&mut self, level: Level, context: String, message: String) {
        let component = &self.component;
        let message = one_line(&message, MAX_LINE);
        let context = one_line(&context, MAX_CONTEXT);
        if !self.budget.admit(message.len() + context.len()) {
            return;
        }
        let line = if context.is_empty() {
            format!("[{component}] log: {message}")
        } else {
            format!("[{component}] log {context}: {message}")
        };
        let version = &*self.version;
        let trace_id = self.trace.as_ref().and_then(|cell| {
            let current = cell.lock().unwrap_or_else(|e| e.into_inner());
            current.as_ref().map(|trace| trace.trace_id())
        });
        let trace_id = trace_id.as_deref();
        match level {
            Level::Trace => {
                tracing::trace!(target: "weft::guest", component = %component, version = %version, trace_id, "{line}")
            }
            Level::Debug => {
                tracing::debug!(target: "weft::guest", component = %component, version = %version, trace_id, "{line}")
            }
            Level::Info => {
                tracing::info!(target: "weft::guest", component = %component, version = %version, trace_id, "{line}")
            }
            Level::Warn => {
                tracing::warn!(target: "weft::guest", component = %component, version = %version, trace_id, "{line}")
            }
            Level::Error => {
                tracing::error!(target: "weft::guest", component = %component, version = %version, trace_id, "{line}")
            }
            Level::Critical => {
                tracing::error!(target: "weft::guest", component = %component, version = %version, trace_id, "critical: {line}")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::one_line;

    #[test]
    fn one_call_is_one_bounded_line() {
        assert_eq!(one_line("plain", 16), "plain");
        assert_eq!(one_line("two\nlines\r\n", 16), "two lines  ");
        assert_eq!(one_line("abcdef", 3), "abc... (3 bytes cut)");
        // Never inside a character.
        assert_eq!(one_line("héllo", 2), "h... (5 bytes cut)");
    }
}
