//! Calls to the Kubernetes API on a backend's behalf (Pods, claims,
//! Leases): each bounded by a timeout, its errors classified once into the
//! kinds every backend uses.

use super::{CallError, ErrorKind};

/// Classifies a failed Kubernetes API call.
pub fn call_error(operation: &'static str, err: kube::Error) -> CallError {
    match err {
        kube::Error::Api(status) => {
            let kind = match status.code {
                404 => ErrorKind::NotFound,
                429 => ErrorKind::Throttled,
                401 | 403 => ErrorKind::Auth,
                400 | 422 => ErrorKind::InvalidParameter,
                _ => ErrorKind::Transient,
            };
            CallError {
                operation,
                kind,
                code: Some(status.reason.clone()).filter(|r| !r.is_empty()),
                message: status.message.clone(),
            }
        }
        other => CallError {
            operation,
            kind: ErrorKind::Transient,
            code: None,
            message: other.to_string(),
        },
    }
}

/// Bounds one call by `timeout`; running out of time is a transient failure.
pub async fn bounded<T>(
    operation: &'static str,
    timeout: std::time::Duration,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, CallError> {
    match tokio::time::timeout(timeout, call).await {
        Ok(result) => result.map_err(|e| call_error(operation, e)),
        Err(_) => Err(CallError {
            operation,
            kind: ErrorKind::Transient,
            code: None,
            message: format!("timed out after {timeout:?}"),
        }),
    }
}
