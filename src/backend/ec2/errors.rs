//! The one place AWS errors are classified, so callers never parse strings.

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};

/// What kind of failure an AWS call had, which decides what tend does about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AwsErrorKind {
    /// The instance or volume named does not exist (or is not visible yet).
    NotFound,
    /// Rate limited; back off, never conclude anything.
    Throttled,
    /// EC2 has no capacity (or quota) for the request right now.
    InsufficientCapacity,
    /// Credentials missing, expired or not allowed to do this.
    Auth,
    /// The request itself is wrong (bad AMI, bad subnet): retrying as-is won't help.
    InvalidParameter,
    /// Timeouts, 5xx, connection errors, malformed answers, spent retry budget.
    Transient,
}

impl AwsErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AwsErrorKind::NotFound => "not_found",
            AwsErrorKind::Throttled => "throttled",
            AwsErrorKind::InsufficientCapacity => "insufficient_capacity",
            AwsErrorKind::Auth => "auth",
            AwsErrorKind::InvalidParameter => "invalid_parameter",
            AwsErrorKind::Transient => "transient",
        }
    }
}

/// A classified AWS error, with the call it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{operation}: {}{message}", code.as_deref().map(|c| format!("{c}: ")).unwrap_or_default())]
pub struct AwsError {
    pub operation: &'static str,
    pub kind: AwsErrorKind,
    pub code: Option<String>,
    pub message: String,
}

impl AwsError {
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
                    .unwrap_or(AwsErrorKind::Transient);
                AwsError {
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
                    AwsErrorKind::Auth
                } else {
                    AwsErrorKind::Transient
                };
                AwsError {
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
        AwsError {
            operation: "DescribeInstances",
            kind: AwsErrorKind::NotFound,
            code: Some("InvalidInstanceID.NotFound".into()),
            message: format!("The instance IDs '{}' do not exist", ids.join(", ")),
        }
    }

    /// An answer that parsed but lacks what EC2 always sends.
    pub fn malformed(operation: &'static str, what: &str) -> Self {
        AwsError {
            operation,
            kind: AwsErrorKind::Transient,
            code: None,
            message: format!("malformed answer: {what}"),
        }
    }
}

/// The instance ids an `InvalidInstanceID.NotFound` error names, or `None`
/// for any other error. EC2 names every unknown id of the call ("The instance
/// IDs 'i-1, i-2' do not exist"); moto names only the first.
pub fn not_found_ids(error: &AwsError) -> Option<Vec<String>> {
    if error.code.as_deref() != Some("InvalidInstanceID.NotFound") {
        return None;
    }
    let ids = error
        .message
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
        .filter(|word| {
            word.strip_prefix("i-")
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
pub fn kind_of_code(code: &str) -> AwsErrorKind {
    match code {
        "InvalidInstanceID.NotFound" | "InvalidVolume.NotFound" => AwsErrorKind::NotFound,
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottled"
        | "SlowDown" => AwsErrorKind::Throttled,
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
        | "VolumeLimitExceeded" => AwsErrorKind::InsufficientCapacity,
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
        | "AccessDeniedException" => AwsErrorKind::Auth,
        // IncorrectInstanceState: the instance is mid-transition; try again later.
        "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "IncorrectInstanceState"
        | "IncorrectState" => AwsErrorKind::Transient,
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
            AwsErrorKind::InvalidParameter
        }
        _ => AwsErrorKind::Transient,
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

    fn not_found(message: &str) -> AwsError {
        AwsError {
            operation: "DescribeInstances",
            kind: AwsErrorKind::NotFound,
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
        let throttled = AwsError {
            code: Some("RequestLimitExceeded".into()),
            ..not_found("The instance ID 'i-1a2b3c4d' does not exist")
        };
        assert_eq!(not_found_ids(&throttled), None);
    }

    #[test]
    fn codes_are_classified() {
        let table = [
            ("InvalidInstanceID.NotFound", AwsErrorKind::NotFound),
            ("RequestLimitExceeded", AwsErrorKind::Throttled),
            (
                "InsufficientInstanceCapacity",
                AwsErrorKind::InsufficientCapacity,
            ),
            ("UnauthorizedOperation", AwsErrorKind::Auth),
            ("AuthFailure", AwsErrorKind::Auth),
            ("InvalidAMIID.NotFound", AwsErrorKind::InvalidParameter),
            ("InvalidAMIID.Malformed", AwsErrorKind::InvalidParameter),
            ("InvalidSubnetID.NotFound", AwsErrorKind::InvalidParameter),
            ("InvalidParameterValue", AwsErrorKind::InvalidParameter),
            ("InternalError", AwsErrorKind::Transient),
            ("SomethingNew", AwsErrorKind::Transient),
        ];
        for (code, kind) in table {
            assert_eq!(kind_of_code(code), kind, "{code}");
        }
    }
}
