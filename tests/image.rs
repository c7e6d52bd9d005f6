//! The image: `scripts/build-image.sh` (what `make image` runs where no container
//! engine can pull base images) assembles it around the binary under test, and
//! `tend version` runs inside it as the non-root user, from its entrypoint.

mod support;

use std::process::Command;

use support::paths::project_path;
use support::tools::run;

const TAG: &str = "localhost/tend:image-test";

fn buildah(args: &[&str]) -> String {
    run(
        Command::new("buildah")
            .args(["--storage-driver", "vfs"])
            .args(args),
        &format!("buildah {args:?}"),
    )
}

#[test]
fn the_image_runs_tend_version_as_a_non_root_user() {
    run(
        Command::new("sh")
            .arg(project_path("scripts/build-image.sh"))
            .args(["--binary", env!("CARGO_BIN_EXE_tend"), "--tag", TAG]),
        "building the image",
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
