//! Where this checkout's files are.

use std::path::PathBuf;

/// A path inside this checkout. Cargo tells a test where its package is when
/// it runs it; the path compiled in is only the fallback, because a test
/// binary reused from a shared target directory may have been built in
/// another checkout.
pub fn project_path(relative: &str) -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")))
        .join(relative)
}
