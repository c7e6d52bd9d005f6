//! The image: `scripts/build-image.sh` (what `make image` runs where no container
//! engine can pull base images) assembles it around the binary under test, and
//! `tend version` runs inside it as the non-root user, from its entrypoint.

mod support;

use std::process::Command;

use support::paths::project_path;

const TAG: &str = "localhost/tend:image-test";

fn buildah(args: &[&str]) -> String {
    let out = Command::new("buildah")
        .arg("--storage-driver")
        .arg("vfs")
        .args(args)
        .output()
        .expect("buildah runs (the build script installs it)");
    assert!(
        out.status.success(),
        "buildah {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn the_image_runs_tend_version_as_a_non_root_user() {
    let built = Command::new("sh")
        .arg(project_path("scripts/build-image.sh"))
        .args(["--binary", env!("CARGO_BIN_EXE_tend"), "--tag", TAG])
        .output()
        .expect("the build script runs");
    assert!(
        built.status.success(),
        "building the image failed: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    let config = buildah(&[
        "inspect",
        "--type",
        "image",
        "--format",
        "{{.OCIv1.Config.User}}|{{.OCIv1.Config.Entrypoint}}|{{.OCIv1.Config.Cmd}}|{{index .OCIv1.Config.Labels \"org.opencontainers.image.version\"}}",
        TAG,
    ]);
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        config.trim(),
        format!("65532:65532|[/tend]|[run]|{version}"),
        "user, entrypoint, command and version label"
    );

    let container = buildah(&["from", TAG]);
    let container = container.trim();
    // The image's entrypoint with `version` in place of its default `run`, as the
    // image's own user: nothing outside the image is needed to start.
    let entrypoint_run = Command::new("buildah")
        .args(["--storage-driver", "vfs", "run", "--isolation", "chroot"])
        .args(["--user", "65532:65532", container, "--", "/tend", "version"])
        .output()
        .expect("buildah runs");
    buildah(&["rm", container]);
    buildah(&["rmi", TAG]);
    assert!(
        entrypoint_run.status.success(),
        "tend version failed in the image: {}",
        String::from_utf8_lossy(&entrypoint_run.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&entrypoint_run.stdout).trim(),
        format!("tend {version}")
    );
}
