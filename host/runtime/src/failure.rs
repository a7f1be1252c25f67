//! When an instance fails (a trap, a missed deadline, an instantiation error): how the
//! failure reads on one line, whether it was the deadline, and the one log line each
//! failure gets, with component name, version and cause. Every trigger reports through
//! here; each maps a failure to its own answer (an HTTP status, a service-error reply).

use std::sync::atomic::Ordering;

use wasmtime::Trap;

use crate::deployment::Deployment;
use crate::store_data::StoreData;

/// Whether `error` is a missed deadline (the epoch callback's, or a timeout's).
pub fn is_deadline(error: &anyhow::Error) -> bool {
    matches!(error.downcast_ref::<Trap>(), Some(Trap::Interrupt))
}

/// Whether `error` is the host being out of instance slots (its pooling allocator is
/// full): an overload of the host, not a failure of the component.
pub fn is_host_full(error: &anyhow::Error) -> bool {
    error
        .chain()
        .any(|e| e.is::<wasmtime::PoolConcurrencyLimitError>())
}

/// An instance failure on one line: wasmtime's messages carry the guest backtrace on
/// several lines. A missed deadline says so plainly.
pub fn one_line(error: &anyhow::Error) -> String {
    if is_deadline(error) {
        return "deadline exceeded".to_string();
    }
    format!("{error:#}")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

/// Adds what the guest last wrote to stderr (a panic message, say) to a failure.
pub fn with_guest_stderr(data: &StoreData, error: anyhow::Error) -> anyhow::Error {
    let stderr = data.stderr_tail();
    if stderr.is_empty() {
        error
    } else {
        error.context(format!("guest stderr: {stderr}"))
    }
}

/// Counts a failed call of `deployment` and logs its one line: component, version and
/// cause. A host out of instance slots is not the component's error: it is logged as
/// the overload it is, and not counted.
pub fn log(deployment: &Deployment, error: &anyhow::Error) {
    let (name, version) = (&deployment.name, &deployment.version);
    if is_host_full(error) {
        tracing::warn!(
            component = %name,
            version = %version,
            "component {name} {version}: no free instance slot on this host (HostConfig::max_instances): answered as overloaded"
        );
        return;
    }
    deployment.errors.fetch_add(1, Ordering::Relaxed);
    let cause = if is_deadline(error) {
        let ms = deployment.spec.limits.timeout_ms;
        tracing::warn!(
            component = %name,
            version = %version,
            "component {name} {version}: instance stopped: deadline of {ms} ms exceeded"
        );
        format!("deadline of {ms} ms exceeded")
    } else {
        let cause = one_line(error);
        tracing::warn!(
            component = %name,
            version = %version,
            "component {name} {version}: instance failed: {cause}"
        );
        cause
    };
    deployment.calls.failed(version, cause);
}
