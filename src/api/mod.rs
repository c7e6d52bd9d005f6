//! The `Workspace` API (`workspaces.tend.dev/v1alpha1`): what users write (spec),
//! what tend reports (status), and the rules the API server enforces with CEL and
//! the controller re-checks for servers that do not.

mod spec;
mod status;
mod validation;

pub use spec::*;
pub use status::*;
pub use validation::{SpecViolation, validate};

/// Annotation whose new value forces an immediate, uncached look at the backend.
pub const REFRESH_ANNOTATION: &str = "tend.dev/refresh";
/// Annotation whose new value clears a CrashLoop and starts healing over.
pub const RETRY_ANNOTATION: &str = "tend.dev/retry";
/// Finalizer that keeps a Workspace until its backend resources are released.
pub const FINALIZER: &str = "tend.dev/cleanup";
