//! Programs a test runs: installed from Debian's packages when missing, and run
//! to their end.

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

/// Runs `command` to its end and returns what it printed on stdout; panics,
/// saying `what` failed and showing both outputs, when it cannot start or exits
/// with an error.
pub fn run(command: &mut Command, what: &str) -> String {
    let out = command
        .output()
        .unwrap_or_else(|e| panic!("{what}: cannot start: {e}"));
    assert!(
        out.status.success(),
        "{what} failed ({}):\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap_or_else(|e| panic!("{what}: output is not UTF-8: {e}"))
}
