//! Programs a test needs from Debian's packages, installed when missing.

use std::process::Command;

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Makes sure `program` is on the PATH, installing `package` with apt-get if
/// it is not (refreshing the package lists once if the first try fails).
/// Panics, naming both, when that fails.
pub fn ensure(program: &str, package: &str) {
    if on_path(program) {
        return;
    }
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-q", package])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let installed = install()
        || (Command::new("apt-get")
            .args(["update", "-q"])
            .output()
            .is_ok_and(|o| o.status.success())
            && install());
    assert!(
        installed && on_path(program),
        "{program} is missing and installing the Debian package {package} failed"
    );
}
