//! The one place AWS errors are classified, so callers never parse strings.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

use crate::backend::{CallError, ErrorKind};

impl CallError {
    /// Classifies any SDK error of any EC2 operation.
    pub fn from_sdk<E, R>(operation: &'static str, err: SdkError<E, R>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + 'static,
        R: std::fmt::Debug,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let code = service.err().code().map(str::to_owned);
                let message = service
                    .err()
                    .message()
                    .map(str::to_owned)
                    .unwrap_or_else(|| DisplayErrorContext(&err).to_string());
                let kind = code
                    .as_deref()
                    .map(kind_of_code)
                    .unwrap_or(ErrorKind::Transient);
                CallError {
                    operation,
                    kind,
                    code,
                    message,
                }
            }
            _ => {
                let message = DisplayErrorContext(&err).to_string();
                // Credential resolution fails before anything is sent; the SDK
                // reports it as a construction or dispatch failure naming the
                // credentials provider.
                let kind = if mentions_missing_credentials(&message) {
                    ErrorKind::Auth
                } else {
                    ErrorKind::Transient
                };
                CallError {
                    operation,
                    kind,
                    code: None,
                    message,
                }
            }
        }
    }

    /// What EC2 answers a describe naming unknown instance ids: the whole
    /// call fails, naming every unknown id. For simulations and tests.
    pub fn instances_not_found(ids: &[&str]) -> Self {
        CallError {
            operation: "DescribeInstances",
            kind: ErrorKind::NotFound,
            code: Some("InvalidInstanceID.NotFound".into()),
            message: format!("The instance IDs '{}' do not exist", ids.join(", ")),
        }
    }
}

/// The instance ids an `InvalidInstanceID.NotFound` error names, or `None`
/// for any other error. EC2 names every unknown id of the call ("The instance
/// IDs 'i-1, i-2' do not exist"); moto names only the first.
pub fn not_found_ids(error: &CallError) -> Option<Vec<String>> {
    named_in(error, "InvalidInstanceID.NotFound", "i-")
}

/// The ids with `prefix` (`i-`, `vol-`) that a not-found error with `code`
/// names, or `None` for any other error.
pub(super) fn named_in(error: &CallError, code: &str, prefix: &str) -> Option<Vec<String>> {
    if error.code.as_deref() != Some(code) {
        return None;
    }
    let ids = error
        .message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| {
            word.strip_prefix(prefix)
                .is_some_and(|hex| !hex.is_empty() && hex.chars().all(|c| c.is_ascii_hexdigit()))
        })
        .map(str::to_owned)
        .collect();
    Some(ids)
}

/// Whether a client-side failure is about credentials: none configured (no
/// identity resolver), or the provider chain could not load any.
fn mentions_missing_credentials(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    m.contains("credential") || m.contains("identity resolver") || m.contains("noidentityresolver")
}

/// Maps an EC2 error code to its kind.
pub fn kind_of_code(code: &str) -> ErrorKind {
    match code {
        "InvalidInstanceID.NotFound" | "InvalidVolume.NotFound" => ErrorKind::NotFound,
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "SlowDown" => ErrorKind::Throttled,
        "InsufficientInstanceCapacity"
        | "InsufficientHostCapacity"
        | "InsufficientReservedInstanceCapacity"
        | "InsufficientCapacity"
        | "InsufficientVolumeCapacity"
        | "InsufficientFreeAddressesInSubnet"
        | "InstanceLimitExceeded"
        | "VcpuLimitExceeded"
        | "MaxSpotInstanceCountExceeded"
        | "SpotMaxPriceTooLow"
        | "VolumeLimitExceeded" => ErrorKind::InsufficientCapacity,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "InvalidClientTokenId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "RequestExpired"
        | "OptInRequired"
        | "Blocked"
        | "PendingVerification"
        | "AccessDenied"
        | "AccessDeniedException" => ErrorKind::Auth,
        // IncorrectInstanceState: the instance is mid-transition; try again later.
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "IncorrectInstanceState"
        | "IncorrectState" => ErrorKind::Transient,
        // Everything else EC2 answers with a 4xx code is a problem with the
        // request: a bad AMI, subnet, instance type, parameter combination.
        c if c.starts_with("Invalid")
            || c.starts_with("Missing")
            || c.starts_with("Unsupported")
            || c.ends_with(".Malformed")
            || c.ends_with(".NotFound")
            || c == "IdempotentParameterMismatch"
            || c == "DryRunOperation"
            || c == "OperationNotPermitted" =>
        {
            ErrorKind::InvalidParameter
        }
        _ => ErrorKind::Transient,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_credentials_are_recognised() {
        assert!(mentions_missing_credentials(
            "dispatch failure: there was no identity resolver for it (NoIdentityResolver)"
        ));
        assert!(mentions_missing_credentials(
            "failed to construct request: the credential provider was not enabled: no providers in chain provided credentials"
        ));
        assert!(!mentions_missing_credentials(
            "io error: connection reset by peer"
        ));
    }

    fn not_found(message: &str) -> CallError {
        CallError {
            operation: "DescribeInstances",
            kind: ErrorKind::NotFound,
            code: Some("InvalidInstanceID.NotFound".into()),
            message: message.into(),
        }
    }

    #[test]
    fn not_found_errors_name_their_ids() {
        assert_eq!(
            not_found_ids(&not_found(
                "The instance IDs 'i-0123456789abcdef0, i-0fedcba9876543210' do not exist"
            )),
            Some(vec![
                "i-0123456789abcdef0".to_owned(),
                "i-0fedcba9876543210".to_owned()
            ])
        );
        assert_eq!(
            not_found_ids(&not_found("The instance ID 'i-1a2b3c4d' does not exist")),
            Some(vec!["i-1a2b3c4d".to_owned()])
        );
        // Not an instance id, and not a not-found error at all.
        assert_eq!(
            not_found_ids(&not_found("The instance ID 'i-xyz' does not exist")),
            Some(vec![])
        );
        let throttled = CallError {
            code: Some("RequestLimitExceeded".into()),
            ..not_found("The instance ID 'i-1a2b3c4d' does not exist")
        };
        assert_eq!(not_found_ids(&throttled), None);
    }

    #[test]
    fn volume_not_found_errors_name_their_volumes() {
        let error = CallError {
            operation: "DescribeVolumes",
            code: Some("InvalidVolume.NotFound".into()),
            // moto prints a set; EC2 a comma-separated list.
            ..not_found("The volume '{'vol-0a1b', 'vol-2c3d'}' does not exist.")
        };
        let named = named_in(&error, "InvalidVolume.NotFound", "vol-");
        assert_eq!(
            named,
            Some(vec!["vol-0a1b".to_owned(), "vol-2c3d".to_owned()])
        );
        // An instance's not-found never names volumes.
        assert_eq!(named_in(&error, "InvalidInstanceID.NotFound", "vol-"), None);
    }

    #[test]
    fn codes_are_classified() {
        let table = [
            ("InvalidInstanceID.NotFound", ErrorKind::NotFound),
            ("RequestLimitExceeded", ErrorKind::Throttled),
            (
                "InsufficientInstanceCapacity",
                ErrorKind::InsufficientCapacity,
            ),
            ("UnauthorizedOperation", ErrorKind::Auth),
            ("AuthFailure", ErrorKind::Auth),
            ("InvalidAMIID.NotFound", ErrorKind::InvalidParameter),
            ("InvalidAMIID.Malformed", ErrorKind::InvalidParameter),
            ("InvalidSubnetID.NotFound", ErrorKind::InvalidParameter),
            ("InvalidParameterValue", ErrorKind::InvalidParameter),
            ("InternalError", ErrorKind::Transient),
            ("SomethingNew", ErrorKind::Transient),
        ];
        for (code, kind) in table {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
    }
}
