//! The controller's JSON logs, as a log pipeline reads them: every line a reconcile
//! writes names the Workspace's namespace, name, backend and phase at its top level, and
//! the sweep's lines sit in a `sweep` span.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::rig::{NS, Rig};
use tend::api::Phase;
use tend::telemetry::FlatJson;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::fmt::format::JsonFields;

#[derive(Clone, Default)]
struct Lines(Arc<Mutex<Vec<u8>>>);

impl Write for Lines {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Lines {
    type Writer = Lines;

    fn make_writer(&'a self) -> Lines {
        self.clone()
    }
}

impl Lines {
    fn parsed(&self) -> Vec<Value> {
        String::from_utf8(self.0.lock().unwrap().clone())
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
            .collect()
    }
}

#[tokio::test]
async fn json_lines_name_the_workspace_its_instance_and_its_phase() {
    let lines = Lines::default();
    tracing_subscriber::fmt()
        .with_env_filter("tend=debug")
        .with_writer(lines.clone())
        .fmt_fields(JsonFields::new())
        .event_format(FlatJson)
        .init();
    let rig = Rig::start().await;
    rig.create(&rig.ec2_workspace("dev")).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let instance = online.status.unwrap().instance_id.unwrap();
    // The line is written once the status write has returned: it may come just after
    // the test sees Online.
    let online_logged = |l: &Value| l["message"] == "phase changed" && l["to"] == "Online";
    rig.kube
        .wait_for(
            support::rig::WAIT,
            "the change to Online in the log",
            |_| lines.parsed().iter().any(online_logged),
        )
        .await;
    rig.wait_sweeps(2).await;

    let logged = lines.parsed();
    let went_online = logged
        .iter()
        .find(|l| online_logged(l))
        .expect("the change to Online is logged");
    assert_eq!(went_online["span"], "reconcile");
    assert_eq!(went_online["namespace"], NS);
    assert_eq!(went_online["workspace"], "dev");
    assert_eq!(went_online["instance"], instance.as_str());
    assert_eq!(went_online["phase"], "Online");
    // Every line inside a reconcile names its Workspace.
    for line in logged.iter().filter(|l| l["span"] == "reconcile") {
        assert_eq!(line["workspace"], "dev", "{line}");
        assert_eq!(line["namespace"], NS, "{line}");
    }
    assert!(
        logged
            .iter()
            .any(|l| l["span"] == "sweep"
                && l["target"].as_str().is_some_and(|t| t.starts_with("tend"))),
        "the sweep logs inside its span"
    );
}
