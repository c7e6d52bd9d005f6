//! What both benchmark programs share: the Workspace they create, and the
//! PASS/FAIL verdict they print.

use serde_json::json;
use tend::api::Workspace;

/// An EC2 Workspace in `namespace`, launched from `ami` into `subnet`.
pub fn ec2_workspace(name: &str, namespace: &str, ami: &str, subnet: &str) -> Workspace {
    serde_json::from_value(json!({
        "apiVersion": "tend.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": { "name": name, "namespace": namespace },
        "spec": {
            "runtime": "ec2",
            "ec2": {
                "instanceType": "t3.micro",
                "imageId": ami,
                "subnetId": subnet,
                "volume": { "sizeGiB": 10 }
            }
        }
    }))
    .expect("workspace json")
}

/// One PASS/FAIL line per target; `failed` once any target failed.
pub struct Verdict {
    pub failed: bool,
}

impl Verdict {
    pub fn check(&mut self, ok: bool, target: &str, measured: String) {
        println!("{} {target}: {measured}", if ok { "PASS" } else { "FAIL" });
        self.failed |= !ok;
    }

    /// Says whether every target passed, and exits accordingly.
    pub fn exit_code(&self) -> std::process::ExitCode {
        if self.failed {
            println!("\nsome targets FAILED");
            std::process::ExitCode::FAILURE
        } else {
            println!("\nall targets PASS");
            std::process::ExitCode::SUCCESS
        }
    }
}
