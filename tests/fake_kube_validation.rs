//! The fake API server refuses what a real one refuses: custom resources are pruned,
//! defaulted and checked against their CRD's schema and CEL rules on every write,
//! Events are checked like the events API, and custom resources take no strategic
//! merge patch.

#[path = "support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;

use fake_kube::{FakeApiServer, FakeConfig};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event as K8sEvent;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;
use kube::api::{Api, ApiResource, DynamicObject, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use serde_json::{Value, json};
use tend::api::Workspace;

const NS: &str = "default";

fn workspaces(server: &FakeApiServer) -> Api<DynamicObject> {
    Api::namespaced_with(server.client(), NS, &ApiResource::erase::<Workspace>(&()))
}

fn workspace(name: &str, spec: Value) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "tend.dev/v1alpha1",
        "kind": "Workspace",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap()
}

fn ec2_spec() -> Value {
    json!({
        "runtime": "ec2",
        "ec2": {"subnetId": "subnet-1", "imageId": "ami-1", "instanceType": "t3.micro"},
    })
}

/// A refused write: its code, message and the fields its causes name.
#[derive(Debug)]
struct Refusal {
    code: u16,
    message: String,
    fields: Vec<String>,
}

fn refusal<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> Refusal {
    match result {
        Err(kube::Error::Api(status)) => Refusal {
            code: status.code,
            message: status.message.clone(),
            fields: status
                .details
                .map(|d| d.causes.into_iter().map(|c| c.field).collect())
                .unwrap_or_default(),
        },
        other => panic!("expected the API to refuse, got {other:?}"),
    }
}

/// Asserts a 422 `Invalid` that names `field` and says `says`.
fn assert_invalid<T: std::fmt::Debug>(result: Result<T, kube::Error>, field: &str, says: &str) {
    let refused = refusal(result);
    assert_eq!(refused.code, 422, "{refused:?}");
    assert!(
        refused.fields.iter().any(|f| f == field),
        "no cause names {field}: {refused:?}"
    );
    assert!(
        refused.message.contains(says),
        "{:?} does not say {says:?}",
        refused.message
    );
}

fn stored(server: &FakeApiServer, name: &str) -> Value {
    server
        .get_object(&format!(
            "/apis/tend.dev/v1alpha1/namespaces/{NS}/workspaces/{name}"
        ))
        .expect("stored workspace")
}

#[tokio::test]
async fn custom_resources_exist_only_through_their_crd() {
    let server = FakeApiServer::start_with(FakeConfig {
        crds: Vec::new(),
        ..FakeConfig::default()
    })
    .await;
    let api = workspaces(&server);
    assert_eq!(refusal(api.list(&ListParams::default()).await).code, 404);
    assert_eq!(
        refusal(
            api.create(&PostParams::default(), &workspace("w", ec2_spec()))
                .await
        )
        .code,
        404
    );

    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    crds.create(&PostParams::default(), &Workspace::crd())
        .await
        .unwrap();
    assert!(
        api.list(&ListParams::default())
            .await
            .unwrap()
            .items
            .is_empty()
    );
    api.create(&PostParams::default(), &workspace("w", ec2_spec()))
        .await
        .unwrap();

    // Only the versions the CRD serves have a route.
    let other_version =
        hyper::Request::get(format!("/apis/tend.dev/v1/namespaces/{NS}/workspaces"))
            .body(Vec::new())
            .unwrap();
    let answer: Result<Value, kube::Error> = server.client().request(other_version).await;
    assert_eq!(refusal(answer).code, 404);
}

#[tokio::test]
async fn unknown_fields_are_pruned_and_defaults_filled_in() {
    let server = FakeApiServer::start().await;
    let api = workspaces(&server);
    let mut spec = ec2_spec();
    spec["ec2"]["unknownField"] = json!(1);
    spec["ec2"]["keyName"] = Value::Null;
    spec["ec2"]["securityGroupIds"] = Value::Null;
    spec["desiredState"] = Value::Null;
    spec["bogus"] = json!(true);
    let mut ws = workspace("w", spec);
    ws.data["extra"] = json!("top-level");
    let created = api.create(&PostParams::default(), &ws).await.unwrap();

    let spec = &created.data["spec"];
    assert_eq!(spec.get("bogus"), None);
    assert_eq!(spec["ec2"].get("unknownField"), None);
    assert_eq!(created.data.get("extra"), None);
    // A nullable field keeps its null; a non-nullable null is defaulted or dropped.
    assert_eq!(spec["ec2"].get("keyName"), Some(&Value::Null));
    assert_eq!(spec["ec2"].get("securityGroupIds"), None);
    assert_eq!(spec["desiredState"], "Running");
    assert_eq!(spec["restartPolicy"], "Always");
    assert_eq!(
        spec["ec2"]["volume"],
        json!({"sizeGiB": 20, "type": "gp3", "deviceName": "/dev/sdf", "reclaimPolicy": "Retain"})
    );
    assert_eq!(stored(&server, "w")["spec"], *spec, "stored as answered");

    // A patch that removes a defaulted field gets the default back.
    let patched = api
        .patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(
                json!({"spec": {"restartPolicy": null, "ec2": {"volume": {"type": null}}}}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(patched.data["spec"]["restartPolicy"], "Always");
    assert_eq!(patched.data["spec"]["ec2"]["volume"]["type"], "gp3");
}

#[tokio::test]
async fn defaults_apply_on_read_too() {
    let server = FakeApiServer::start().await;
    let api = workspaces(&server);
    let created = api
        .create(&PostParams::default(), &workspace("w", ec2_spec()))
        .await
        .unwrap();
    assert_eq!(created.data["spec"]["ec2"].get("keyName"), None);

    // The CRD gains a default for a field the stored object lacks.
    let crds: Api<CustomResourceDefinition> = Api::all(server.client());
    let key_name = "/spec/versions/0/schema/openAPIV3Schema/properties/spec/properties/ec2/properties/keyName/default";
    let add_default: Patch<()> = Patch::Json(
        serde_json::from_value(json!([{"op": "add", "path": key_name, "value": "ops"}])).unwrap(),
    );
    crds.patch("workspaces.tend.dev", &PatchParams::default(), &add_default)
        .await
        .unwrap();

    let read = api.get("w").await.unwrap();
    assert_eq!(read.data["spec"]["ec2"]["keyName"], "ops");
    assert_eq!(
        read.metadata.resource_version, created.metadata.resource_version,
        "defaulted on read, not rewritten"
    );
    let listed = api.list(&ListParams::default()).await.unwrap();
    assert_eq!(listed.items[0].data["spec"]["ec2"]["keyName"], "ops");
}

#[tokio::test]
async fn schema_violations_are_refused_naming_the_field() {
    let server = FakeApiServer::start().await;
    let api = workspaces(&server);
    let pp = PostParams::default();
    let with = |edit: &dyn Fn(&mut Value)| {
        let mut spec = ec2_spec();
        edit(&mut spec);
        workspace("w", spec)
    };

    assert_invalid(
        api.create(&pp, &with(&|s| s["runtime"] = json!("docker")))
            .await,
        "spec.runtime",
        "Unsupported value: \"docker\"",
    );
    assert_invalid(
        api.create(
            &pp,
            &with(&|s| s["ec2"]["volume"] = json!({"sizeGiB": "big"})),
        )
        .await,
        "spec.ec2.volume.sizeGiB",
        "must be of type integer",
    );
    let mut no_subnet = ec2_spec();
    no_subnet["ec2"].as_object_mut().unwrap().remove("subnetId");
    assert_invalid(
        api.create(&pp, &workspace("w", no_subnet)).await,
        "spec.ec2.subnetId",
        "Required value",
    );
    let no_spec: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "tend.dev/v1alpha1", "kind": "Workspace", "metadata": {"name": "w"},
    }))
    .unwrap();
    assert_invalid(api.create(&pp, &no_spec).await, "spec", "Required value");
    assert_invalid(
        api.create(&pp, &with(&|s| s["ec2"]["region"] = json!("x".repeat(33))))
            .await,
        "spec.ec2.region",
        "Too long",
    );
    let tags: serde_json::Map<String, Value> =
        (0..46).map(|i| (format!("k{i}"), json!("v"))).collect();
    assert_invalid(
        api.create(
            &pp,
            &with(&|s| s["ec2"]["tags"] = Value::Object(tags.clone())),
        )
        .await,
        "spec.ec2.tags",
        "Too many",
    );
    assert_invalid(
        api.create(
            &pp,
            &with(&|s| s["ec2"]["tags"] = json!({"team": "x".repeat(257)})),
        )
        .await,
        "spec.ec2.tags[team]",
        "Too long",
    );
    let container = |size: Value| {
        workspace(
            "w",
            json!({"runtime": "container", "container": {"image": "busybox", "volume": {"size": size}}}),
        )
    };
    assert_invalid(
        api.create(&pp, &container(json!(true))).await,
        "spec.container.volume.size",
        "integer,string",
    );
    api.create(&pp, &container(json!("10Gi"))).await.unwrap();
    assert!(
        server.requests().iter().filter(|r| r.status == 422).count() >= 8,
        "every refusal above came from validation"
    );
}

#[tokio::test]
async fn every_write_path_is_validated_and_a_refused_write_changes_nothing() {
    let server = FakeApiServer::start().await;
    let api = workspaces(&server);
    let pp = PostParams::default();
    let created = api.create(&pp, &workspace("w", ec2_spec())).await.unwrap();
    let merge = |v: Value| Patch::Merge(v);
    let json_patch = |v: Value| -> Patch<Value> { Patch::Json(serde_json::from_value(v).unwrap()) };
    let params = PatchParams::default();

    assert_invalid(
        api.patch(
            "w",
            &params,
            &merge(json!({"spec": {"restartPolicy": "Sometimes"}})),
        )
        .await,
        "spec.restartPolicy",
        "Unsupported value",
    );
    assert_invalid(
        api.patch(
            "w",
            &params,
            &json_patch(
                json!([{"op": "replace", "path": "/spec/desiredState", "value": "Paused"}]),
            ),
        )
        .await,
        "spec.desiredState",
        "Unsupported value",
    );
    let mut replaced = created.clone();
    replaced.data["spec"]["ec2"]["volume"] = json!({"sizeGiB": -1.5});
    assert_invalid(
        api.replace("w", &pp, &replaced).await,
        "spec.ec2.volume.sizeGiB",
        "must be of type integer",
    );
    assert_invalid(
        api.patch_status(
            "w",
            &params,
            &merge(json!({"status": {"phase": "Sleeping"}})),
        )
        .await,
        "status.phase",
        "Unsupported value",
    );
    assert_invalid(
        api.patch_status("w", &params, &merge(json!({"status": {"restarts": -1}})))
            .await,
        "status.restarts",
        "greater than or equal to 0",
    );
    assert_invalid(
        api.patch_status(
            "w",
            &params,
            &merge(json!({"status": {"launchedAt": "yesterday"}})),
        )
        .await,
        "status.launchedAt",
        "date-time",
    );
    let condition = |reason: &str| json!({"type": "Ready", "status": "True", "reason": reason, "message": "", "lastTransitionTime": "2025-01-01T00:00:00Z"});
    assert_invalid(
        api.patch_status(
            "w",
            &params,
            &merge(json!({"status": {"conditions": [condition("A"), condition("B")]}})),
        )
        .await,
        "status.conditions[1]",
        "Duplicate value",
    );
    assert_invalid(
        api.patch_status(
            "w",
            &params,
            &merge(json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}})),
        )
        .await,
        "status.conditions[0].reason",
        "Required value",
    );
    let mut status_put = created.clone();
    status_put.data["status"] = json!({"phase": "Sleeping"});
    assert_invalid(
        api.replace_status("w", &pp, &status_put).await,
        "status.phase",
        "Unsupported value",
    );
    let after = api.get("w").await.unwrap();
    assert_eq!(
        after.metadata.resource_version,
        created.metadata.resource_version
    );

    // A valid status write goes through.
    let online = api
        .patch_status(
            "w",
            &params,
            &merge(json!({"status": {"phase": "Online", "restarts": 0}})),
        )
        .await
        .unwrap();
    assert_eq!(online.data["status"]["phase"], "Online");

    // Custom resources take no strategic merge patch.
    let refused = refusal(
        api.patch(
            "w",
            &params,
            &Patch::Strategic(json!({"spec": {"desiredState": "Stopped"}})),
        )
        .await,
    );
    assert_eq!(refused.code, 415, "{refused:?}");
}

#[tokio::test]
async fn cel_rules_and_transition_rules_are_enforced_from_1_25() {
    let server = FakeApiServer::start().await;
    let api = workspaces(&server);
    let pp = PostParams::default();
    let params = PatchParams::default();

    assert_invalid(
        api.create(&pp, &workspace("w", json!({"runtime": "ec2"})))
            .await,
        "spec",
        "spec.ec2 must be set when spec.runtime is ec2",
    );
    let mut tagged = ec2_spec();
    tagged["ec2"]["tags"] = json!({"tend.dev/workspace-uid": "forged"});
    assert_invalid(
        api.create(&pp, &workspace("w", tagged)).await,
        "spec.ec2.tags",
        "reserved tend.dev/ prefix",
    );
    let mut tiny = ec2_spec();
    tiny["ec2"]["volume"] = json!({"sizeGiB": 0});
    assert_invalid(
        api.create(&pp, &workspace("w", tiny)).await,
        "spec.ec2.volume.sizeGiB",
        "between 1 and 65536",
    );

    let mut regional = ec2_spec();
    regional["ec2"]["region"] = json!("us-east-1");
    api.create(&pp, &workspace("w", regional)).await.unwrap();
    assert_invalid(
        api.patch(
            "w",
            &params,
            &Patch::Merge(json!({"spec": {"ec2": {"region": "eu-west-1"}}})),
        )
        .await,
        "spec.ec2.region",
        "spec.ec2.region is immutable",
    );
    assert_invalid(
        api.patch(
            "w",
            &params,
            &Patch::Merge(json!({"spec": {"runtime": "external", "ec2": null, "external": {}}})),
        )
        .await,
        "spec.runtime",
        "spec.runtime is immutable",
    );
    // Transition rules hold only against an old value: a status write is fine.
    api.patch_status(
        "w",
        &params,
        &Patch::Merge(json!({"status": {"phase": "Pending"}})),
    )
    .await
    .unwrap();
    assert!(
        server.unevaluated_rules().is_empty(),
        "rules the evaluator skipped: {:?}",
        server.unevaluated_rules()
    );
}

#[tokio::test]
async fn servers_before_1_25_skip_cel_but_not_the_schema() {
    let server = FakeApiServer::start_with(FakeConfig {
        minor: 24,
        ..FakeConfig::default()
    })
    .await;
    assert_eq!(
        server
            .client()
            .apiserver_version()
            .await
            .unwrap()
            .git_version,
        "v1.24.0"
    );
    let api = workspaces(&server);
    let created = api
        .create(
            &PostParams::default(),
            &workspace("w", json!({"runtime": "ec2"})),
        )
        .await
        .unwrap();
    assert_eq!(
        created.data["spec"]["desiredState"], "Running",
        "still defaulted"
    );
    api.patch(
        "w",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"runtime": "external"}})),
    )
    .await
    .unwrap();
    assert_invalid(
        api.patch(
            "w",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"runtime": "docker"}})),
        )
        .await,
        "spec.runtime",
        "Unsupported value",
    );
}

fn events(server: &FakeApiServer) -> Api<K8sEvent> {
    Api::namespaced(server.client(), NS)
}

fn event(name: &str, fields: Value) -> K8sEvent {
    let mut body = json!({
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": name},
        "eventTime": "2025-01-01T00:00:00.000000Z",
        "reportingController": "tend",
        "reportingInstance": "tend",
        "action": "Launch",
        "reason": "Launched",
        "type": "Normal",
        "regarding": {"kind": "Workspace", "name": "w", "namespace": NS},
        "note": "launched",
    });
    for (k, v) in fields.as_object().unwrap() {
        if v.is_null() {
            body.as_object_mut().unwrap().remove(k);
        } else {
            body[k] = v.clone();
        }
    }
    serde_json::from_value(body).unwrap()
}

#[tokio::test]
async fn events_are_checked_like_the_events_api() {
    let server = FakeApiServer::start().await;
    let api = events(&server);
    let pp = PostParams::default();
    api.create(&pp, &event("ok", json!({}))).await.unwrap();

    // With an eventTime, the reporter, action, reason and type are all required.
    let bare = refusal(
        api.create(
            &pp,
            &event(
                "bare",
                json!({"reportingController": null, "reportingInstance": null,
                       "action": null, "reason": null, "type": null}),
            ),
        )
        .await,
    );
    assert_eq!(bare.code, 422);
    for field in [
        "reportingController",
        "reportingInstance",
        "action",
        "reason",
        "type",
    ] {
        assert!(
            bare.fields.iter().any(|f| f == field),
            "{field} not named: {bare:?}"
        );
    }
    assert_invalid(
        api.create(&pp, &event("timeless", json!({"eventTime": null})))
            .await,
        "eventTime",
        "Required value",
    );
    assert_invalid(
        api.create(
            &pp,
            &event("long-reason", json!({"reason": "R".repeat(129)})),
        )
        .await,
        "reason",
        "at most 128",
    );
    assert_invalid(
        api.create(
            &pp,
            &event("long-action", json!({"action": "A".repeat(129)})),
        )
        .await,
        "action",
        "at most 128",
    );
    assert_invalid(
        api.create(&pp, &event("odd-type", json!({"type": "Info"})))
            .await,
        "type",
        "has invalid value: Info",
    );
    assert_invalid(
        api.create(
            &pp,
            &event(
                "short-series",
                json!({"series": {"count": 1, "lastObservedTime": "2025-01-01T00:00:00.000000Z"}}),
            ),
        )
        .await,
        "series.count",
        "should be at least 2",
    );
    assert_invalid(
        api.create(&pp, &event("old-style", json!({"deprecatedCount": 3})))
            .await,
        "count",
        "needs to be unset",
    );
    // The note limit is 1 KiB in bytes: 512 two-byte characters fit, 513 do not.
    api.create(&pp, &event("full-note", json!({"note": "é".repeat(512)})))
        .await
        .unwrap();
    assert_invalid(
        api.create(&pp, &event("big-note", json!({"note": "é".repeat(513)})))
            .await,
        "message",
        "at most 1024 characters",
    );

    // What an event says is immutable; only its series may grow.
    let params = PatchParams::default();
    assert_invalid(
        api.patch("ok", &params, &Patch::Merge(json!({"note": "rewritten"})))
            .await,
        "message",
        "field is immutable",
    );
    assert_invalid(
        api.patch(
            "ok",
            &params,
            &Patch::Merge(
                json!({"series": {"count": 1, "lastObservedTime": "2025-01-01T00:01:00.000000Z"}}),
            ),
        )
        .await,
        "series.count",
        "should be at least 2",
    );
    api.patch(
        "ok",
        &params,
        &Patch::Merge(
            json!({"series": {"count": 2, "lastObservedTime": "2025-01-01T00:01:00.000000Z"}}),
        ),
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_recorder_repeats_through_series_patches_and_long_notes_are_refused() {
    let server = FakeApiServer::start().await;
    let recorder = Recorder::new(
        server.client(),
        Reporter {
            controller: "tend".into(),
            instance: None,
        },
    );
    let reference = ObjectReference {
        api_version: Some("tend.dev/v1alpha1".into()),
        kind: Some("Workspace".into()),
        name: Some("w".into()),
        namespace: Some(NS.into()),
        uid: Some("0000-1111".into()),
        ..Default::default()
    };
    let launched = Event {
        type_: EventType::Normal,
        reason: "Launched".into(),
        note: Some("instance i-1 launched".into()),
        action: "Launch".into(),
        secondary: None,
    };
    for _ in 0..3 {
        recorder.publish(&launched, &reference).await.unwrap();
    }
    let stored = server.list_objects(&format!("/apis/events.k8s.io/v1/namespaces/{NS}/events"));
    assert_eq!(stored.len(), 1);
    assert_eq!(stored[0]["series"]["count"], 3);
    assert_eq!(server.count_requests("PATCH", ""), 2);

    let verbose = Event {
        note: Some("x".repeat(1025)),
        reason: "Verbose".into(),
        ..launched
    };
    assert_invalid(
        recorder.publish(&verbose, &reference).await,
        "message",
        "at most 1024",
    );
}
