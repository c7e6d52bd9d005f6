//! Test rig shared by the integration tests: a fake Kubernetes API server over
//! real HTTP, moto behind a fault-injecting proxy, and the real controller.
#![allow(dead_code)]

pub mod checks;
pub mod fake_kube;
pub mod faults;
pub mod kubelet;
pub mod manifests;
pub mod moto;
pub mod paths;
pub mod rig;
pub mod tools;
