//! The fake API server, exercised through real kube-rs clients, watchers and controllers.
//! These tests install a small CRD of their own; tend's CRD is exercised in
//! `fake_kube_validation.rs`.

#[path = "support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;

use std::sync::Arc;
use std::time::Duration;

use fake_kube::{Failure, FakeApiServer, FakeConfig};
use futures::{Stream, StreamExt};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{
    Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams,
};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event as KubeEvent, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::runtime::watcher::Event;
use kube::runtime::{Controller, WatchStreamExt};
use kube::{CustomResource, CustomResourceExt, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

const WAIT: Duration = Duration::from_secs(10);
const WS_PATH: &str = "/apis/tend.dev/v1alpha1/namespaces/default/workspaces";

/// A tiny custom resource with a status subresource, shaped like the operator's.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(
    group = "tend.dev",
    version = "v1alpha1",
    kind = "Workspace",
    namespaced,
    status = "WorkspaceStatus"
)]
pub struct WorkspaceSpec {
    pub size: String,
}

#[derive(Deserialize, Serialize, Clone, Debug, Default, JsonSchema)]
pub struct WorkspaceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<String>,
}

/// A cluster with this file's small Workspace CRD installed instead of tend's.
fn config() -> FakeConfig {
    FakeConfig {
        crds: vec![serde_json::to_value(Workspace::crd()).unwrap()],
        ..FakeConfig::default()
    }
}

async fn start() -> FakeApiServer {
    FakeApiServer::start_with(config()).await
}

fn workspace(name: &str, size: &str) -> Workspace {
    Workspace::new(
        name,
        WorkspaceSpec {
            size: size.to_string(),
        },
    )
}

fn config_map(name: &str, labels: &[(&str, &str)]) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.to_string());
    if !labels.is_empty() {
        cm.metadata.labels = Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
    }
    cm
}

/// The status code and reason of an API error, or a panic for anything else.
fn api_error<T: std::fmt::Debug>(result: Result<T, kube::Error>) -> (u16, String) {
    match result {
        Err(kube::Error::Api(status)) => (status.code, status.reason.clone()),
        other => panic!("expected an API error, got {other:?}"),
    }
}

fn names<K: ResourceExt>(items: &[K]) -> Vec<String> {
    let mut names: Vec<String> = items.iter().map(|o| o.name_any()).collect();
    names.sort();
    names
}

/// The next watcher event, failing the test instead of hanging.
async fn next_event<S, K>(stream: &mut S) -> Result<Event<K>, watcher::Error>
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Unpin,
{
    tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("watcher produced no event in time")
        .expect("watcher stream ended")
}

#[tokio::test]
async fn create_get_list_with_selectors_and_errors() {
    let server = start().await;
    let client = server.client();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();

    let a = api
        .create(&pp, &config_map("a", &[("app", "x")]))
        .await
        .unwrap();
    assert!(a.metadata.uid.is_some());
    assert!(a.metadata.creation_timestamp.is_some());
    assert_eq!(a.metadata.namespace.as_deref(), Some("default"));
    assert_eq!(
        a.metadata.generation, None,
        "core objects without status carry no generation"
    );
    let got = api.get("a").await.unwrap();
    assert_eq!(got.metadata.resource_version, a.metadata.resource_version);

    assert_eq!(
        api_error(api.create(&pp, &config_map("a", &[])).await),
        (409, "AlreadyExists".into())
    );
    assert_eq!(
        api_error(api.get("missing").await),
        (404, "NotFound".into())
    );

    let mut generated = ConfigMap::default();
    generated.metadata.generate_name = Some("gen-".into());
    let generated = api.create(&pp, &generated).await.unwrap();
    assert!(generated.name_any().starts_with("gen-") && generated.name_any().len() == 9);
    api.create(&pp, &config_map("b", &[("app", "y")]))
        .await
        .unwrap();

    let list = |selector: &str| {
        let api = api.clone();
        let lp = ListParams::default().labels(selector);
        async move { names(&api.list(&lp).await.unwrap().items) }
    };
    let gen_name = generated.name_any();
    assert_eq!(
        list("").await,
        vec!["a".to_string(), "b".into(), gen_name.clone()]
    );
    assert_eq!(list("app=x").await, vec!["a"]);
    assert_eq!(
        list("app!=x").await,
        vec!["b".to_string(), gen_name.clone()]
    );
    assert_eq!(list("app in (x,y)").await, vec!["a", "b"]);
    assert_eq!(
        list("app notin (x)").await,
        vec!["b".to_string(), gen_name.clone()]
    );
    assert_eq!(list("app").await, vec!["a", "b"]);
    assert_eq!(list("!app").await, vec![gen_name.clone()]);
    let by_field = api
        .list(&ListParams::default().fields("metadata.name=b"))
        .await
        .unwrap();
    assert_eq!(names(&by_field.items), vec!["b"]);

    // Pagination: the client follows continue tokens.
    let page = api.list(&ListParams::default().limit(2)).await.unwrap();
    assert_eq!(page.items.len(), 2);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let rest = api
        .list(&ListParams::default().limit(2).continue_token(&token))
        .await
        .unwrap();
    assert_eq!(rest.items.len(), 1);
    assert!(rest.metadata.continue_.is_none());

    // Cluster-wide list across namespaces.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    let mut other_ns = k8s_openapi::api::core::v1::Namespace::default();
    other_ns.metadata.name = Some("other".into());
    namespaces.create(&pp, &other_ns).await.unwrap();
    let other: Api<ConfigMap> = Api::namespaced(client.clone(), "other");
    other.create(&pp, &config_map("c", &[])).await.unwrap();
    let all: Api<ConfigMap> = Api::all(client.clone());
    assert_eq!(
        all.list(&ListParams::default()).await.unwrap().items.len(),
        4
    );
    let in_other = all
        .list(&ListParams::default().fields("metadata.namespace=other"))
        .await
        .unwrap();
    assert_eq!(names(&in_other.items), vec!["c"]);

    // The body's namespace must match the path's.
    let mut wrong = config_map("d", &[]);
    wrong.metadata.namespace = Some("other".into());
    assert_eq!(api_error(api.create(&pp, &wrong).await).0, 400);

    // Raw list shape: kind, apiVersion and resourceVersion, with typed items.
    let raw = server.list_objects("/api/v1/namespaces/default/configmaps");
    assert_eq!(raw.len(), 3);
    assert!(
        raw.iter()
            .all(|o| o["kind"] == "ConfigMap" && o["apiVersion"] == "v1")
    );
    let request = hyper::Request::get("/api/v1/namespaces/default/configmaps")
        .body(Vec::new())
        .unwrap();
    let body: Value = client.request(request).await.unwrap();
    assert_eq!(body["kind"], "ConfigMapList");
    assert_eq!(body["apiVersion"], "v1");
    assert!(
        body["metadata"]["resourceVersion"]
            .as_str()
            .is_some_and(|rv| !rv.is_empty())
    );
    assert!(
        body["items"]
            .as_array()
            .unwrap()
            .iter()
            .all(|o| o["kind"] == "ConfigMap")
    );
    assert_eq!(server.list_objects("/api/v1/configmaps").len(), 4);
}

#[tokio::test]
async fn merge_patch_and_json_patch_with_failing_test() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut cm = config_map("p", &[]);
    cm.data = Some(
        [
            ("k1".to_string(), "v1".to_string()),
            ("k2".into(), "v2".into()),
        ]
        .into(),
    );
    let created = api.create(&PostParams::default(), &cm).await.unwrap();

    let patched = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Merge(json!({"data": {"k1": null, "k3": "v3"}})),
        )
        .await
        .unwrap();
    let data = patched.data.clone().unwrap();
    assert_eq!(data.keys().cloned().collect::<Vec<_>>(), vec!["k2", "k3"]);
    assert_ne!(
        patched.metadata.resource_version,
        created.metadata.resource_version
    );

    let failing: Patch<()> = Patch::Json(
        serde_json::from_value(json!([
            {"op": "add", "path": "/data/k4", "value": "v4"},
            {"op": "test", "path": "/data/k2", "value": "not-v2"},
        ]))
        .unwrap(),
    );
    assert_eq!(
        api_error(api.patch("p", &PatchParams::default(), &failing).await),
        (422, "Invalid".into())
    );
    let after = api.get("p").await.unwrap();
    assert_eq!(
        after.metadata.resource_version, patched.metadata.resource_version,
        "a failed patch applies nothing"
    );
    assert!(!after.data.unwrap().contains_key("k4"));

    let passing: Patch<()> = Patch::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/data/k2", "value": "v2"},
            {"op": "remove", "path": "/data/k2"},
            {"op": "add", "path": "/metadata/labels", "value": {"a": "b"}},
        ]))
        .unwrap(),
    );
    let done = api
        .patch("p", &PatchParams::default(), &passing)
        .await
        .unwrap();
    assert_eq!(done.labels().get("a").map(String::as_str), Some("b"));
    assert!(!done.data.unwrap().contains_key("k2"));

    // Built-in kinds take strategic merge patches (merged like a merge patch here).
    let smp = api
        .patch(
            "p",
            &PatchParams::default(),
            &Patch::Strategic(json!({"data": {"k5": "v5"}})),
        )
        .await
        .unwrap();
    assert_eq!(smp.data.unwrap().get("k5").map(String::as_str), Some("v5"));

    assert_eq!(
        api_error(
            api.patch("nope", &PatchParams::default(), &Patch::Merge(json!({})))
                .await
        ),
        (404, "NotFound".into())
    );
    let content_types: Vec<String> = server
        .requests()
        .into_iter()
        .filter(|r| r.method == "PATCH")
        .filter_map(|r| r.content_type)
        .collect();
    assert!(content_types.contains(&"application/merge-patch+json".to_string()));
    assert!(content_types.contains(&"application/json-patch+json".to_string()));
}

fn holder(lease: &Lease) -> Option<String> {
    lease.spec.as_ref().and_then(|s| s.holder_identity.clone())
}

fn lease_claim(identity: &str) -> Value {
    json!({
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "spec": {"holderIdentity": identity, "leaseDurationSeconds": 15},
    })
}

/// Field ownership as leader election relies on it: the first apply of a field wins, a
/// second manager applying another value is refused unless it forces, and a field
/// removed by any write is free again.
#[tokio::test]
async fn server_side_apply_tracks_field_owners_and_refuses_conflicts() {
    let server = start().await;
    let api: Api<Lease> = Api::default_namespaced(server.client());
    let created = api
        .patch(
            "lock",
            &PatchParams::apply("one"),
            &Patch::Apply(lease_claim("one")),
        )
        .await
        .expect("an apply creates a missing object");
    assert_eq!(holder(&created).as_deref(), Some("one"));
    let owners: Vec<String> = created
        .metadata
        .managed_fields
        .iter()
        .flatten()
        .map(|e| {
            format!(
                "{}:{}",
                e.manager.clone().unwrap_or_default(),
                e.operation.clone().unwrap_or_default()
            )
        })
        .collect();
    assert_eq!(owners, ["one:Apply"]);

    let refused = api
        .patch(
            "lock",
            &PatchParams::apply("two"),
            &Patch::Apply(lease_claim("two")),
        )
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!((status.code, status.reason.as_str()), (409, "Conflict"));
            assert!(
                status
                    .message
                    .contains("conflict with \"one\": .spec.holderIdentity"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        holder(&api.get("lock").await.unwrap()).as_deref(),
        Some("one")
    );

    // The same value is shared, not a conflict.
    let shared = api
        .patch(
            "lock",
            &PatchParams::apply("three"),
            &Patch::Apply(lease_claim("one")),
        )
        .await
        .expect("applying the value already there is no conflict");
    assert_eq!(holder(&shared).as_deref(), Some("one"));

    // A merge patch that removes the field frees it: now another manager may apply it.
    let release = json!({"spec": {"holderIdentity": null}});
    let released = api
        .patch("lock", &PatchParams::default(), &Patch::Merge(&release))
        .await
        .unwrap();
    assert_eq!(holder(&released), None);
    let taken = api
        .patch(
            "lock",
            &PatchParams::apply("two"),
            &Patch::Apply(lease_claim("two")),
        )
        .await
        .expect("a free field can be applied");
    assert_eq!(holder(&taken).as_deref(), Some("two"));

    // Forcing takes a field from its owner, whose next apply of another value conflicts.
    let forced = api
        .patch(
            "lock",
            &PatchParams::apply("one").force(),
            &Patch::Apply(lease_claim("one")),
        )
        .await
        .expect("a forced apply takes the field");
    assert_eq!(holder(&forced).as_deref(), Some("one"));
    let (code, reason) = api_error(
        api.patch(
            "lock",
            &PatchParams::apply("two"),
            &Patch::Apply(lease_claim("two")),
        )
        .await,
    );
    assert_eq!((code, reason.as_str()), (409, "Conflict"));

    // A strategic merge patch is a write like any other: the field changes hands.
    let grab = json!({"spec": {"holderIdentity": "four"}});
    api.patch("lock", &PatchParams::default(), &Patch::Strategic(&grab))
        .await
        .unwrap();
    let (code, _) = api_error(
        api.patch(
            "lock",
            &PatchParams::apply("one"),
            &Patch::Apply(lease_claim("one")),
        )
        .await,
    );
    assert_eq!(
        code, 409,
        "the strategic patch's manager now owns the holder"
    );
}

#[tokio::test]
async fn an_apply_removes_what_its_manager_no_longer_sends() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1", "b": "2"}});
    api.patch("ssa", &PatchParams::apply("me"), &Patch::Apply(&first))
        .await
        .unwrap();
    let other = json!({"data": {"c": "3"}});
    api.patch("ssa", &PatchParams::default(), &Patch::Merge(&other))
        .await
        .unwrap();
    let second = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "ssa"}, "data": {"a": "1"}});
    let after = api
        .patch("ssa", &PatchParams::apply("me"), &Patch::Apply(&second))
        .await
        .unwrap();
    let data = after.data.unwrap_or_default();
    assert_eq!(data.get("a").map(String::as_str), Some("1"));
    assert_eq!(
        data.get("b"),
        None,
        "left out of the apply, owned by no one else"
    );
    assert_eq!(
        data.get("c").map(String::as_str),
        Some("3"),
        "another writer's field stays"
    );

    let nameless = server.call(
        "PATCH",
        "/api/v1/namespaces/default/configmaps/ssa",
        "application/apply-patch+yaml",
        &second,
    );
    let (code, status) = nameless.expect_err("an apply must name its manager");
    assert_eq!(
        (code, &status["reason"]),
        (422, &json!("Invalid")),
        "{status}"
    );
    let wrong_kind = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "ssa"}});
    let (code, _) = api_error(
        api.patch("ssa", &PatchParams::apply("me"), &Patch::Apply(&wrong_kind))
            .await,
    );
    assert_eq!(code, 400);
}

#[tokio::test]
async fn status_subresource_is_separate_and_generation_tracks_spec() {
    let server = start().await;
    let api: Api<Workspace> = Api::default_namespaced(server.client());
    let mut ws = workspace("w1", "small");
    ws.status = Some(WorkspaceStatus {
        phase: Some("Ignored".into()),
    });
    let created = api.create(&PostParams::default(), &ws).await.unwrap();
    assert_eq!(created.metadata.generation, Some(1));
    assert!(
        created.status.is_none(),
        "status is dropped on create when it is a subresource"
    );

    // Writes to the main resource ignore status.
    let spec_only = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"status": {"phase": "Nope"}})),
        )
        .await
        .unwrap();
    assert!(spec_only.status.is_none());
    assert_eq!(
        spec_only.metadata.resource_version, created.metadata.resource_version,
        "a no-op write keeps the rv"
    );

    // Status writes change only status, bump rv but not generation.
    let with_status = api
        .patch_status(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "huge"}, "status": {"phase": "Ready"}})),
        )
        .await
        .unwrap();
    assert_eq!(
        with_status.status.as_ref().unwrap().phase.as_deref(),
        Some("Ready")
    );
    assert_eq!(with_status.spec.size, "small");
    assert_eq!(with_status.metadata.generation, Some(1));
    assert_ne!(
        with_status.metadata.resource_version,
        created.metadata.resource_version
    );

    // Spec changes bump generation and keep status.
    let bigger = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"size": "large"}})),
        )
        .await
        .unwrap();
    assert_eq!(bigger.metadata.generation, Some(2));
    assert_eq!(
        bigger.status.as_ref().unwrap().phase.as_deref(),
        Some("Ready")
    );

    // Metadata-only changes do not bump generation.
    let labelled = api
        .patch(
            "w1",
            &PatchParams::default(),
            &Patch::Merge(json!({"metadata": {"labels": {"x": "y"}}})),
        )
        .await
        .unwrap();
    assert_eq!(labelled.metadata.generation, Some(2));

    // PUT of the status subresource, and of the main resource carrying a different status.
    let mut replaced = labelled.clone();
    replaced.status = Some(WorkspaceStatus {
        phase: Some("Stopped".into()),
    });
    let replaced = api
        .replace_status("w1", &PostParams::default(), &replaced)
        .await
        .unwrap();
    assert_eq!(
        replaced.status.as_ref().unwrap().phase.as_deref(),
        Some("Stopped")
    );
    let mut main = replaced.clone();
    main.status = Some(WorkspaceStatus {
        phase: Some("Ignored".into()),
    });
    main.spec.size = "medium".into();
    let main = api
        .replace("w1", &PostParams::default(), &main)
        .await
        .unwrap();
    assert_eq!(
        main.status.as_ref().unwrap().phase.as_deref(),
        Some("Stopped")
    );
    assert_eq!(main.metadata.generation, Some(3));

    let stored = server.get_object(&format!("{WS_PATH}/w1")).unwrap();
    assert_eq!(stored["kind"], "Workspace");
    assert_eq!(stored["apiVersion"], "tend.dev/v1alpha1");
    assert_eq!(stored["status"]["phase"], "Stopped");
    assert_eq!(server.count_requests("PATCH", "/status"), 1);
    assert_eq!(server.count_requests("PUT", "/status"), 1);

    // Resources without a status subresource have no /status path.
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    cms.create(&PostParams::default(), &config_map("c", &[]))
        .await
        .unwrap();
    let status = cms
        .patch_status("c", &PatchParams::default(), &Patch::Merge(json!({})))
        .await;
    assert_eq!(api_error(status).0, 404);
}

#[tokio::test]
async fn stale_resource_version_conflicts() {
    let server = start().await;
    let api: Api<Lease> = Api::default_namespaced(server.client());
    let mut lease = Lease::default();
    lease.metadata.name = Some("leader".into());
    let created = api.create(&PostParams::default(), &lease).await.unwrap();

    let mut mine = created.clone();
    mine.spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("me".into());
    let updated = api
        .replace("leader", &PostParams::default(), &mine)
        .await
        .unwrap();
    assert_ne!(
        updated.metadata.resource_version,
        created.metadata.resource_version
    );

    // Replacing from the stale copy loses the race.
    let mut theirs = created.clone();
    theirs
        .spec
        .get_or_insert_with(Default::default)
        .holder_identity = Some("them".into());
    assert_eq!(
        api_error(api.replace("leader", &PostParams::default(), &theirs).await),
        (409, "Conflict".into())
    );

    // So does a patch that carries a stale resourceVersion.
    let stale = json!({"metadata": {"resourceVersion": created.metadata.resource_version}, "spec": {"holderIdentity": "them"}});
    assert_eq!(
        api_error(
            api.patch("leader", &PatchParams::default(), &Patch::Merge(stale))
                .await
        )
        .0,
        409
    );
    let current = json!({"metadata": {"resourceVersion": updated.metadata.resource_version}, "spec": {"holderIdentity": "us"}});
    let ok = api
        .patch("leader", &PatchParams::default(), &Patch::Merge(current))
        .await
        .unwrap();
    assert_eq!(ok.spec.unwrap().holder_identity.as_deref(), Some("us"));

    // A PUT of a missing object is not a create.
    let mut ghost = Lease::default();
    ghost.metadata.name = Some("ghost".into());
    assert_eq!(
        api_error(api.replace("ghost", &PostParams::default(), &ghost).await).0,
        404
    );
}

#[tokio::test]
async fn delete_with_finalizers_waits_for_their_removal() {
    let server = start().await;
    let api: Api<Workspace> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &workspace("fin", "small"))
        .await
        .unwrap();

    // Add a finalizer the way kube's finalizer helper does.
    let add: Patch<()> = Patch::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["tend.dev/cleanup"]},
        ]))
        .unwrap(),
    );
    let with_finalizer = api
        .patch("fin", &PatchParams::default(), &add)
        .await
        .unwrap();
    assert_eq!(with_finalizer.finalizers(), ["tend.dev/cleanup"]);
    assert_eq!(with_finalizer.metadata.generation, Some(1));

    let deleting = api.delete("fin", &DeleteParams::default()).await.unwrap();
    let deleting = deleting
        .left()
        .expect("the object comes back while finalizers remain");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    assert_eq!(
        deleting.metadata.generation,
        Some(2),
        "starting deletion bumps generation"
    );
    assert!(
        api.get("fin")
            .await
            .unwrap()
            .metadata
            .deletion_timestamp
            .is_some()
    );

    // Deleting again is harmless; adding finalizers now is refused.
    api.delete("fin", &DeleteParams::default()).await.unwrap();
    let more: Patch<()> = Patch::Json(
        serde_json::from_value(
            json!([{"op": "add", "path": "/metadata/finalizers/-", "value": "other"}]),
        )
        .unwrap(),
    );
    assert_eq!(
        api_error(api.patch("fin", &PatchParams::default(), &more).await),
        (422, "Invalid".into())
    );

    // Removing the last finalizer finishes the deletion.
    let remove: Patch<()> = Patch::Json(
        serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers/0", "value": "tend.dev/cleanup"},
            {"op": "remove", "path": "/metadata/finalizers/0"},
        ]))
        .unwrap(),
    );
    api.patch("fin", &PatchParams::default(), &remove)
        .await
        .unwrap();
    assert_eq!(api_error(api.get("fin").await), (404, "NotFound".into()));
    assert!(server.get_object(&format!("{WS_PATH}/fin")).is_none());
    assert_eq!(
        api_error(api.delete("fin", &DeleteParams::default()).await),
        (404, "NotFound".into())
    );

    // Without finalizers an object goes at once.
    api.create(&PostParams::default(), &workspace("quick", "small"))
        .await
        .unwrap();
    api.delete("quick", &DeleteParams::default()).await.unwrap();
    assert!(server.list_objects(WS_PATH).is_empty());

    // Preconditions are honoured.
    let again = api
        .create(&PostParams::default(), &workspace("pre", "small"))
        .await
        .unwrap();
    let wrong_uid = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: Some("nope".into()),
            resource_version: None,
        }),
        ..Default::default()
    };
    assert_eq!(api_error(api.delete("pre", &wrong_uid).await).0, 409);
    let right = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: again.uid(),
            resource_version: again.resource_version(),
        }),
        ..Default::default()
    };
    api.delete("pre", &right).await.unwrap();
}

#[tokio::test]
async fn watcher_receives_apply_and_delete() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut events = watcher(api.clone(), watcher::Config::default()).boxed();
    loop {
        if let Event::InitDone = next_event(&mut events).await.unwrap() {
            break;
        }
    }
    api.create(&PostParams::default(), &config_map("seen", &[]))
        .await
        .unwrap();
    match next_event(&mut events).await.unwrap() {
        Event::Apply(cm) => assert_eq!(cm.name_any(), "seen"),
        other => panic!("expected Apply, got {other:?}"),
    }
    api.delete("seen", &DeleteParams::default()).await.unwrap();
    match next_event(&mut events).await.unwrap() {
        Event::Delete(cm) => assert_eq!(cm.name_any(), "seen"),
        other => panic!("expected Delete, got {other:?}"),
    }
    let watch = server
        .requests()
        .into_iter()
        .find(|r| r.is_watch())
        .expect("a watch request");
    assert_eq!(
        watch.query_param("allowWatchBookmarks").as_deref(),
        Some("true")
    );
}

#[tokio::test]
async fn raw_watch_applies_selectors_and_ends_after_timeout() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let start = api
        .list(&ListParams::default())
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    api.create(&PostParams::default(), &config_map("a", &[("team", "x")]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("b", &[("team", "y")]))
        .await
        .unwrap();
    // Relabelling moves objects in and out of the selected set.
    api.patch(
        "b",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "x"}}})),
    )
    .await
    .unwrap();
    api.patch(
        "a",
        &PatchParams::default(),
        &Patch::Merge(json!({"metadata": {"labels": {"team": "z"}}})),
    )
    .await
    .unwrap();

    let wp = WatchParams::default().labels("team=x").timeout(1);
    let stream = api.watch(&wp, &start).await.unwrap();
    let seen: Vec<(String, String)> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the watch ends after timeoutSeconds")
        .into_iter()
        .map(|e| match e.unwrap() {
            WatchEvent::Added(cm) => ("ADDED".into(), cm.name_any()),
            WatchEvent::Modified(cm) => ("MODIFIED".into(), cm.name_any()),
            WatchEvent::Deleted(cm) => ("DELETED".into(), cm.name_any()),
            WatchEvent::Bookmark(_) => ("BOOKMARK".into(), String::new()),
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        })
        .collect();
    assert_eq!(
        seen,
        vec![
            ("ADDED".to_string(), "a".to_string()),
            ("ADDED".into(), "b".into()),
            ("DELETED".into(), "a".into())
        ]
    );

    // rv "0" starts with the current objects as ADDED.
    let from_now = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    let added: Vec<String> = from_now
        .filter_map(|e| async move {
            match e {
                Ok(WatchEvent::Added(cm)) => Some(cm.name_any()),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(added, vec!["a", "b"]);
}

#[tokio::test]
async fn bookmarks_and_streaming_lists() {
    let cluster = FakeConfig {
        bookmark_interval: Duration::from_millis(50),
        ..config()
    };
    let server = FakeApiServer::start_with(cluster).await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("one", &[]))
        .await
        .unwrap();
    let mut stream = watcher(api.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = Vec::new();
    loop {
        match next_event(&mut stream).await.unwrap() {
            Event::InitApply(cm) => initial.push(cm.name_any()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(initial, vec!["one"]);
    let rv = server.current_resource_version().to_string();
    let mut raw = api
        .watch(&WatchParams::default().timeout(5), &rv)
        .await
        .unwrap()
        .boxed();
    let first = tokio::time::timeout(WAIT, raw.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    match first {
        WatchEvent::Bookmark(b) => assert_eq!(b.metadata.resource_version, rv),
        other => panic!("expected a bookmark, got {other:?}"),
    }
}

#[tokio::test]
async fn expired_watch_gets_410_and_the_watcher_relists() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &config_map("before", &[]))
        .await
        .unwrap();
    // Drive the watcher in a task so its watch opens while the test waits.
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut source = watcher(api.clone(), watcher::Config::default())
        .default_backoff()
        .boxed();
    let forward = tokio::spawn(async move {
        while let Some(event) = source.next().await {
            if tx.send(event).is_err() {
                break;
            }
        }
    });
    let mut events =
        futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
            .boxed();
    loop {
        if let Event::InitDone = next_event(&mut events).await.unwrap() {
            break;
        }
    }
    let lists_before = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count();
    server
        .wait_for(WAIT, "the watcher's watch to be open", |s| {
            s.open_watches() > 0
        })
        .await;

    server.compact_history();
    server.close_watches();
    let mut saw_expired = false;
    loop {
        match next_event(&mut events).await {
            Err(watcher::Error::WatchError(status)) => {
                assert_eq!((status.code, status.reason.as_str()), (410, "Expired"));
                saw_expired = true;
            }
            Ok(Event::InitDone) if saw_expired => break,
            Ok(_) => {}
            Err(other) => panic!("unexpected watcher error {other:?}"),
        }
    }
    let lists_after = server
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && !r.is_watch())
        .count();
    assert!(lists_after > lists_before, "the watcher relisted after 410");

    api.create(&PostParams::default(), &config_map("after", &[]))
        .await
        .unwrap();
    loop {
        if let Event::Apply(cm) = next_event(&mut events).await.unwrap() {
            assert_eq!(cm.name_any(), "after");
            break;
        }
    }
    // The raw protocol: a too-old resourceVersion answers an ERROR event with a 410 Status.
    let stale = api
        .watch(&WatchParams::default().timeout(1), "1")
        .await
        .unwrap();
    let first: Vec<_> = stale.collect().await;
    match &first[..] {
        [Ok(WatchEvent::Error(e))] => assert_eq!((e.code, e.reason.as_str()), (410, "Expired")),
        other => panic!("expected one 410 ERROR event, got {other:?}"),
    }
    forward.abort();
}

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct ReconcileError(#[from] kube::Error);

async fn reconcile(
    ws: Arc<Workspace>,
    client: Arc<kube::Client>,
) -> Result<Action, ReconcileError> {
    let api: Api<Workspace> =
        Api::namespaced((*client).clone(), &ws.namespace().unwrap_or_default());
    let status = json!({"status": {"phase": format!("Ready-{}", ws.spec.size)}});
    api.patch_status(
        &ws.name_any(),
        &PatchParams::default(),
        &Patch::Merge(status),
    )
    .await?;
    Ok(Action::await_change())
}

fn error_policy(_: Arc<Workspace>, _: &ReconcileError, _: Arc<kube::Client>) -> Action {
    Action::requeue(Duration::from_millis(200))
}

#[tokio::test]
async fn controller_reconciles_objects_created_after_it_started() {
    let server = start().await;
    let client = server.client();
    let controller = Controller::new(
        Api::<Workspace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(reconcile, error_policy, Arc::new(client.clone()))
    .for_each(|_| async {});
    let running = tokio::spawn(controller);
    server
        .wait_for(WAIT, "the controller to watch workspaces", |s| {
            s.requests()
                .iter()
                .any(|r| r.is_watch() && r.path == "/apis/tend.dev/v1alpha1/workspaces")
        })
        .await;

    // The first status write fails; the controller retries through its error policy.
    server.inject_failure(Failure::new("PATCH", "/status", 500, "InternalError", 1));
    let api: Api<Workspace> = Api::default_namespaced(client.clone());
    api.create(&PostParams::default(), &workspace("late", "small"))
        .await
        .unwrap();
    let phase = |s: &FakeApiServer| {
        s.get_object(&format!("{WS_PATH}/late"))
            .and_then(|o| o.pointer("/status/phase").cloned())
    };
    server
        .wait_for(WAIT, "the workspace to be reconciled", |s| {
            phase(s) == Some(json!("Ready-small"))
        })
        .await;
    let statuses: Vec<u16> = server
        .requests()
        .iter()
        .filter(|r| r.method == "PATCH" && r.path.ends_with("/late/status"))
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses[..2], [500, 200]);

    // A spec change is reconciled too.
    api.patch(
        "late",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"size": "big"}})),
    )
    .await
    .unwrap();
    server
        .wait_for(WAIT, "the spec change to be reconciled", |s| {
            phase(s) == Some(json!("Ready-big"))
        })
        .await;
    let stored = server.get_object(&format!("{WS_PATH}/late")).unwrap();
    assert_eq!(stored["metadata"]["generation"], 2);
    running.abort();
}

#[tokio::test]
async fn recorder_publishes_then_patches_the_same_event() {
    let server = start().await;
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
        name: Some("w1".into()),
        namespace: Some("default".into()),
        uid: Some("0000-1111".into()),
        ..Default::default()
    };
    let event = KubeEvent {
        type_: EventType::Normal,
        reason: "Provisioned".into(),
        note: Some("instance is up".into()),
        action: "Provision".into(),
        secondary: None,
    };
    recorder.publish(&event, &reference).await.unwrap();
    recorder.publish(&event, &reference).await.unwrap();
    let events = server.list_objects("/apis/events.k8s.io/v1/namespaces/default/events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["kind"], "Event");
    assert_eq!(events[0]["reason"], "Provisioned");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(server.count_requests("POST", "/events"), 1);
    let patch = server
        .requests()
        .into_iter()
        .find(|r| r.method == "PATCH")
        .unwrap();
    assert_eq!(
        patch.content_type.as_deref(),
        Some("application/merge-patch+json")
    );
    assert_eq!(patch.status, 200);
}

#[tokio::test]
async fn injected_failures_are_consumed_in_order() {
    let server = start().await;
    let api: Api<Workspace> = Api::default_namespaced(server.client());
    api.create(&PostParams::default(), &workspace("f", "small"))
        .await
        .unwrap();
    server.inject_failure(Failure::new("PATCH", "/status", 409, "Conflict", 2));
    let patch = Patch::Merge(json!({"status": {"phase": "Ready"}}));
    for _ in 0..2 {
        assert_eq!(
            api_error(api.patch_status("f", &PatchParams::default(), &patch).await),
            (409, "Conflict".into())
        );
    }
    api.patch_status("f", &PatchParams::default(), &patch)
        .await
        .unwrap();
    assert_eq!(server.count_requests("PATCH", "/status"), 3);
    // Other requests are unaffected.
    api.get("f").await.unwrap();
}

#[tokio::test]
async fn kubeconfig_points_a_client_at_the_server() {
    let server = start().await;
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&server.kubeconfig_yaml()).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    assert_eq!(config.default_namespace, "default");
    let client = kube::Client::try_from(config).unwrap();
    assert_eq!(
        client.apiserver_version().await.unwrap().git_version,
        "v1.37.0"
    );
}

#[derive(Debug, thiserror::Error)]
#[error("finalizer: {0}")]
struct FinalizerError(#[from] kube::runtime::finalizer::Error<ReconcileError>);

async fn reconcile_with_finalizer(
    ws: Arc<Workspace>,
    client: Arc<kube::Client>,
) -> Result<Action, FinalizerError> {
    use kube::runtime::finalizer::{Event as Finalizer, finalizer};
    let api: Api<Workspace> =
        Api::namespaced((*client).clone(), &ws.namespace().unwrap_or_default());
    let cleanup_api = api.clone();
    Ok(finalizer(&api, "tend.dev/cleanup", ws, |event| async move {
        match event {
            Finalizer::Apply(ws) => {
                let status = json!({"status": {"phase": "Ready"}});
                cleanup_api
                    .patch_status(
                        &ws.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(status),
                    )
                    .await?;
                Ok::<_, ReconcileError>(Action::await_change())
            }
            Finalizer::Cleanup(_) => Ok(Action::await_change()),
        }
    })
    .await?)
}

#[tokio::test]
async fn kube_finalizer_helper_adds_and_removes_its_finalizer() {
    let server = start().await;
    let client = server.client();
    let controller = Controller::new(
        Api::<Workspace>::all(client.clone()),
        watcher::Config::default(),
    )
    .run(
        reconcile_with_finalizer,
        |_, _, _| Action::requeue(Duration::from_millis(200)),
        Arc::new(client.clone()),
    )
    .for_each(|_| async {});
    let running = tokio::spawn(controller);
    let api: Api<Workspace> = Api::default_namespaced(client);
    api.create(&PostParams::default(), &workspace("guarded", "small"))
        .await
        .unwrap();
    let path = format!("{WS_PATH}/guarded");
    server
        .wait_for(WAIT, "the finalizer and status to be set", |s| {
            s.get_object(&path).is_some_and(|o| {
                o["metadata"]["finalizers"] == json!(["tend.dev/cleanup"])
                    && o["status"]["phase"] == "Ready"
            })
        })
        .await;
    api.delete("guarded", &DeleteParams::default())
        .await
        .unwrap();
    server
        .wait_for(WAIT, "the workspace to be finalized and gone", |s| {
            s.get_object(&path).is_none()
        })
        .await;
    // Both finalizer patches were JSON patches guarded by a `test` operation.
    let json_patches: Vec<Value> = server
        .requests()
        .into_iter()
        .filter(|r| r.content_type.as_deref() == Some("application/json-patch+json"))
        .filter_map(|r| r.json_body())
        .collect();
    assert_eq!(json_patches.len(), 2);
    assert!(json_patches.iter().all(|p| p[0]["op"] == "test"));
    running.abort();
}

#[tokio::test]
async fn metadata_watcher_and_partial_object_metadata() {
    let server = start().await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut cm = config_map("meta", &[("k", "v")]);
    cm.data = Some([("big".to_string(), "payload".to_string())].into());
    api.create(&PostParams::default(), &cm).await.unwrap();
    let meta_api: Api<kube::core::PartialObjectMeta<ConfigMap>> =
        Api::default_namespaced(server.client());
    let mut events = watcher(meta_api, watcher::Config::default()).boxed();
    let mut seen = Vec::new();
    loop {
        match next_event(&mut events).await.unwrap() {
            Event::InitApply(m) => seen.push(m.name_any()),
            Event::InitDone => break,
            _ => {}
        }
    }
    assert_eq!(seen, vec!["meta"]);
    let one = api.get_metadata("meta").await.unwrap();
    assert_eq!(one.labels().get("k").map(String::as_str), Some("v"));
    let last = server.requests().pop().unwrap();
    assert_eq!(last.status, 200);
}

#[tokio::test]
async fn dry_run_namespaces_and_create_rules() {
    let server = start().await;
    let client = server.client();
    let api: Api<ConfigMap> = Api::default_namespaced(client.clone());

    // Dry runs answer as if written, but store nothing.
    let dry = PostParams {
        dry_run: true,
        ..Default::default()
    };
    api.create(&dry, &config_map("dry", &[])).await.unwrap();
    assert!(
        server
            .get_object("/api/v1/namespaces/default/configmaps/dry")
            .is_none()
    );

    // A create must not carry a resourceVersion, as when re-creating a fetched object.
    let created = api
        .create(&PostParams::default(), &config_map("copy", &[]))
        .await
        .unwrap();
    api.delete("copy", &DeleteParams::default()).await.unwrap();
    assert_eq!(
        api_error(api.create(&PostParams::default(), &created).await).0,
        500
    );

    // Names must be DNS subdomains.
    assert_eq!(
        api_error(
            api.create(&PostParams::default(), &config_map("Upper", &[]))
                .await
        )
        .0,
        422
    );

    // A write carrying another object's uid is refused.
    let live = api
        .create(&PostParams::default(), &config_map("live", &[]))
        .await
        .unwrap();
    let mut other_uid = live.clone();
    other_uid.metadata.uid = Some("not-the-uid".into());
    assert_eq!(
        api_error(
            api.replace("live", &PostParams::default(), &other_uid)
                .await
        )
        .0,
        409
    );

    // The usual namespaces exist; creates in any other namespace are refused.
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    assert_eq!(
        names(&namespaces.list(&ListParams::default()).await.unwrap().items),
        vec!["default", "kube-node-lease", "kube-public", "kube-system"]
    );
    let missing: Api<ConfigMap> = Api::namespaced(client.clone(), "nowhere");
    assert_eq!(
        api_error(
            missing
                .create(&PostParams::default(), &config_map("x", &[]))
                .await
        ),
        (404, "NotFound".into())
    );

    // Patch content types the server does not know are refused.
    let request = hyper::Request::patch("/api/v1/namespaces/default/configmaps/live")
        .header("Content-Type", "application/json")
        .body(b"{}".to_vec())
        .unwrap();
    let refused: Result<Value, kube::Error> = client.request(request).await;
    assert_eq!(api_error(refused).0, 415);

    // Deleting a collection by selector.
    api.create(
        &PostParams::default(),
        &config_map("sel-1", &[("batch", "1")]),
    )
    .await
    .unwrap();
    api.create(
        &PostParams::default(),
        &config_map("sel-2", &[("batch", "1")]),
    )
    .await
    .unwrap();
    api.delete_collection(
        &DeleteParams::default(),
        &ListParams::default().labels("batch=1"),
    )
    .await
    .unwrap();
    assert_eq!(
        names(&api.list(&ListParams::default()).await.unwrap().items),
        vec!["live"]
    );
}

#[tokio::test]
async fn cluster_scoped_resources_with_status() {
    use k8s_openapi::api::core::v1::Node;
    let server = start().await;
    let nodes: Api<Node> = Api::all(server.client());
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    let created = nodes.create(&PostParams::default(), &node).await.unwrap();
    assert_eq!(created.metadata.namespace, None);
    let status = json!({"status": {"phase": "Running"}});
    nodes
        .patch_status("n1", &PatchParams::default(), &Patch::Merge(status))
        .await
        .unwrap();
    let stored = server.get_object("/api/v1/nodes/n1").unwrap();
    assert_eq!(stored["status"]["phase"], "Running");
    assert_eq!(server.list_objects("/api/v1/nodes").len(), 1);
    // A namespaced path for a cluster-scoped resource does not exist.
    let request = hyper::Request::get("/api/v1/namespaces/default/nodes/n1")
        .body(Vec::new())
        .unwrap();
    let wrong: Result<Value, kube::Error> = server.client().request(request).await;
    assert_eq!(api_error(wrong).0, 404);
}

#[tokio::test]
async fn watch_history_is_bounded() {
    let cluster = FakeConfig {
        history_limit: 2,
        ..config()
    };
    let server = FakeApiServer::start_with(cluster).await;
    let api: Api<ConfigMap> = Api::default_namespaced(server.client());
    let first = api
        .create(&PostParams::default(), &config_map("h1", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("h2", &[]))
        .await
        .unwrap();
    api.create(&PostParams::default(), &config_map("h3", &[]))
        .await
        .unwrap();
    let first_rv: u64 = first.resource_version().unwrap().parse().unwrap();

    // Everything after h1 is still retained.
    let replay: Vec<String> = api
        .watch(&WatchParams::default().timeout(1), &first_rv.to_string())
        .await
        .unwrap()
        .filter_map(|e| async move {
            match e {
                Ok(WatchEvent::Added(cm)) => Some(cm.name_any()),
                _ => None,
            }
        })
        .collect()
        .await;
    assert_eq!(replay, vec!["h2", "h3"]);

    // h1's own event has been dropped, so watching from before it has expired.
    let expired: Vec<_> = api
        .watch(
            &WatchParams::default().timeout(1),
            &(first_rv - 1).to_string(),
        )
        .await
        .unwrap()
        .collect()
        .await;
    assert!(matches!(&expired[..], [Ok(WatchEvent::Error(e))] if e.code == 410));
}

#[tokio::test]
async fn requests_are_recorded_with_their_user_and_rbac_attributes() {
    let server = start().await;
    let api: Api<Workspace> = Api::default_namespaced(server.client_as("alice"));
    api.create(&PostParams::default(), &workspace("r", "small"))
        .await
        .unwrap();
    api.get("r").await.unwrap();
    api.patch_status(
        "r",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"phase": "Ready"}})),
    )
    .await
    .unwrap();
    let watch = api
        .watch(&WatchParams::default().timeout(1), "0")
        .await
        .unwrap();
    watch.collect::<Vec<_>>().await;
    api.delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    let everywhere: Api<Workspace> = Api::all(server.client());
    everywhere.list(&ListParams::default()).await.unwrap();
    server.client().apiserver_version().await.unwrap();

    let seen: Vec<String> = server
        .requests()
        .into_iter()
        .map(|r| {
            let target = r.resource.map(|t| {
                let sub = t.subresource.map(|s| format!("/{s}")).unwrap_or_default();
                let ns = t.namespace.unwrap_or_else(|| "*".into());
                format!("{}/{}{sub} in {ns}", t.group, t.resource)
            });
            format!(
                "{} {} {}",
                r.user.unwrap_or_else(|| "-".into()),
                r.verb,
                target.unwrap_or(r.path)
            )
        })
        .collect();
    assert_eq!(
        seen,
        [
            "alice create tend.dev/workspaces in default",
            "alice get tend.dev/workspaces in default",
            "alice patch tend.dev/workspaces/status in default",
            "alice watch tend.dev/workspaces in default",
            "alice deletecollection tend.dev/workspaces in default",
            "- list tend.dev/workspaces in *",
            "- get /version",
        ]
    );
}

const CM_PATH: &str = "/api/v1/namespaces/default/configmaps";

/// The reference a controller sets on what it creates for `owner`, as tend's container
/// runtime does.
fn controller_of<K: kube::Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    OwnerReference {
        block_owner_deletion: Some(true),
        ..owner
            .controller_owner_ref(&())
            .expect("a stored owner has a name and uid")
    }
}

/// A plain (not controller) reference to `owner`.
fn reference_to<K: kube::Resource<DynamicType = ()>>(owner: &K) -> OwnerReference {
    owner
        .owner_ref(&())
        .expect("a stored owner has a name and uid")
}

fn owned_config_map(name: &str, owners: Vec<OwnerReference>) -> ConfigMap {
    let mut cm = config_map(name, &[]);
    cm.metadata.owner_references = Some(owners);
    cm
}

/// The owner uids of a stored object, `None` once it is gone.
fn owner_uids(server: &FakeApiServer, path: &str) -> Option<Vec<String>> {
    let obj = server.get_object(path)?;
    let refs = obj["metadata"]["ownerReferences"].as_array().cloned();
    Some(
        refs.unwrap_or_default()
            .iter()
            .map(|r| r["uid"].as_str().unwrap_or_default().to_string())
            .collect(),
    )
}

/// Every event of a raw watch from `rv` until its one-second timeout, as (type, name).
async fn events_since(api: &Api<ConfigMap>, rv: u64) -> Vec<(String, String)> {
    let stream = api
        .watch(&WatchParams::default().timeout(1), &rv.to_string())
        .await
        .unwrap();
    let mut seen: Vec<(String, String)> = tokio::time::timeout(WAIT, stream.collect::<Vec<_>>())
        .await
        .expect("the watch ends after timeoutSeconds")
        .into_iter()
        .filter_map(|e| match e.unwrap() {
            WatchEvent::Added(cm) => Some(("ADDED".into(), cm.name_any())),
            WatchEvent::Modified(cm) => Some(("MODIFIED".into(), cm.name_any())),
            WatchEvent::Deleted(cm) => Some(("DELETED".into(), cm.name_any())),
            WatchEvent::Bookmark(_) => None,
            WatchEvent::Error(e) => panic!("unexpected error event {e:?}"),
        })
        .collect();
    // The collector promises no order among dependents.
    seen.sort();
    seen
}

#[tokio::test]
async fn dependents_go_after_their_owner() {
    let server = start().await;
    let client = server.client();
    let workspaces: Api<Workspace> = Api::default_namespaced(client.clone());
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();
    let owner = workspaces
        .create(&pp, &workspace("owner", "small"))
        .await
        .unwrap();
    let child = cms
        .create(&pp, &owned_config_map("child", vec![controller_of(&owner)]))
        .await
        .unwrap();
    cms.create(
        &pp,
        &owned_config_map("grandchild", vec![controller_of(&child)]),
    )
    .await
    .unwrap();
    cms.create(&pp, &config_map("bystander", &[]))
        .await
        .unwrap();
    let mut pod = Pod::default();
    pod.metadata.name = Some("runner".into());
    pod.metadata.owner_references = Some(vec![controller_of(&owner)]);
    pods.create(&pp, &pod).await.unwrap();

    // A dry run deletes nothing, dependents included.
    let dry = DeleteParams {
        dry_run: true,
        ..Default::default()
    };
    workspaces.delete("owner", &dry).await.unwrap();
    assert!(server.get_object(&format!("{CM_PATH}/child")).is_some());

    let mut events = watcher(cms.clone(), watcher::Config::default()).boxed();
    loop {
        if let Event::InitDone = next_event(&mut events).await.unwrap() {
            break;
        }
    }
    let before = server.current_resource_version();
    workspaces
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    // Each dependent, and its own dependent in turn, goes with a DELETED event.
    let mut deleted = Vec::new();
    while deleted.len() < 2 {
        match next_event(&mut events).await.unwrap() {
            Event::Delete(cm) => {
                let rv: u64 = cm.resource_version().unwrap().parse().unwrap();
                deleted.push((cm.name_any(), rv));
            }
            other => panic!("expected only deletions, got {other:?}"),
        }
    }
    deleted.sort();
    assert_eq!(
        deleted.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["child", "grandchild"]
    );
    assert!(
        deleted.iter().all(|(_, rv)| *rv > before) && deleted[0].1 != deleted[1].1,
        "each deletion has a fresh resourceVersion: {deleted:?}"
    );
    assert_eq!(
        names(&cms.list(&ListParams::default()).await.unwrap().items),
        vec!["bystander"]
    );
    server
        .wait_for(WAIT, "the owned pod to go", |s| {
            s.get_object("/api/v1/namespaces/default/pods/runner")
                .is_none()
        })
        .await;
}

#[tokio::test]
async fn dependents_with_finalizers_are_marked_and_go_when_finalized() {
    let server = start().await;
    let workspaces: Api<Workspace> = Api::default_namespaced(server.client());
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let owner = workspaces
        .create(&PostParams::default(), &workspace("owner", "small"))
        .await
        .unwrap();
    let mut held = owned_config_map("held", vec![controller_of(&owner)]);
    held.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    cms.create(&PostParams::default(), &held).await.unwrap();
    let before = server.current_resource_version();

    workspaces
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    let path = format!("{CM_PATH}/held");
    server
        .wait_for(WAIT, "the dependent to be marked for deletion", |s| {
            s.get_object(&path)
                .is_some_and(|o| o["metadata"]["deletionTimestamp"].is_string())
        })
        .await;
    assert_eq!(
        cms.get("held").await.unwrap().finalizers(),
        ["example.com/hold"]
    );

    let release = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    cms.patch("held", &PatchParams::default(), &release)
        .await
        .unwrap();
    server
        .wait_for(WAIT, "the finalized dependent to go", |s| {
            s.get_object(&path).is_none()
        })
        .await;
    assert_eq!(
        events_since(&cms, before).await,
        [
            ("DELETED".to_string(), "held".to_string()),
            ("MODIFIED".into(), "held".into())
        ]
    );
}

#[tokio::test]
async fn owners_being_finalized_keep_their_dependents() {
    let server = start().await;
    let workspaces: Api<Workspace> = Api::default_namespaced(server.client());
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let mut guarded = workspace("guarded", "small");
    guarded.metadata.finalizers = Some(vec!["tend.dev/cleanup".into()]);
    let owner = workspaces
        .create(&PostParams::default(), &guarded)
        .await
        .unwrap();
    let dependent = cms
        .create(
            &PostParams::default(),
            &owned_config_map("dependent", vec![controller_of(&owner)]),
        )
        .await
        .unwrap();

    let deleting = workspaces
        .delete("guarded", &DeleteParams::default())
        .await
        .unwrap()
        .left()
        .expect("the owner waits for its finalizer");
    assert!(deleting.metadata.deletion_timestamp.is_some());
    // The owner still exists, so its dependent is untouched.
    let untouched = cms.get("dependent").await.unwrap();
    assert_eq!(untouched.resource_version(), dependent.resource_version());
    assert!(untouched.metadata.deletion_timestamp.is_none());

    let finalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    workspaces
        .patch("guarded", &PatchParams::default(), &finalize)
        .await
        .unwrap();
    server
        .wait_for(WAIT, "the dependent to go with its finalized owner", |s| {
            s.get_object(&format!("{CM_PATH}/dependent")).is_none()
        })
        .await;
    assert!(server.get_object(&format!("{WS_PATH}/guarded")).is_none());
}

#[tokio::test]
async fn a_dependent_with_two_owners_stays_while_one_remains() {
    let server = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let pp = PostParams::default();
    let first = cms.create(&pp, &config_map("first", &[])).await.unwrap();
    let second = cms.create(&pp, &config_map("second", &[])).await.unwrap();
    let shared = owned_config_map("shared", vec![controller_of(&first), reference_to(&second)]);
    cms.create(&pp, &shared).await.unwrap();
    let path = format!("{CM_PATH}/shared");

    cms.delete("first", &DeleteParams::default()).await.unwrap();
    // The live owner keeps it; the collector drops the reference that now dangles.
    server
        .wait_for(WAIT, "the dangling reference to be dropped", |s| {
            owner_uids(s, &path) == Some(vec![second.uid().unwrap()])
        })
        .await;
    let kept = cms.get("shared").await.unwrap();
    assert!(kept.metadata.deletion_timestamp.is_none());

    cms.delete("second", &DeleteParams::default())
        .await
        .unwrap();
    server
        .wait_for(WAIT, "the dependent to go with its last owner", |s| {
            s.get_object(&path).is_none()
        })
        .await;
}

#[tokio::test]
async fn objects_released_by_their_owner_survive_it() {
    let server = start().await;
    let workspaces: Api<Workspace> = Api::default_namespaced(server.client());
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let pp = PostParams::default();
    let owner = workspaces
        .create(&pp, &workspace("owner", "small"))
        .await
        .unwrap();
    for name in ["kept", "released"] {
        cms.create(&pp, &owned_config_map(name, vec![controller_of(&owner)]))
            .await
            .unwrap();
    }
    let release = Patch::Merge(json!({"metadata": {"ownerReferences": null}}));
    let released = cms
        .patch("released", &PatchParams::default(), &release)
        .await
        .unwrap();
    assert!(released.owner_references().is_empty());

    workspaces
        .delete("owner", &DeleteParams::default())
        .await
        .unwrap();
    server
        .wait_for(WAIT, "the still-owned dependent to go", |s| {
            s.get_object(&format!("{CM_PATH}/kept")).is_none()
        })
        .await;
    let survivor = cms.get("released").await.unwrap();
    assert_eq!(survivor.resource_version(), released.resource_version());
}

#[tokio::test]
async fn orphan_propagation_keeps_dependents_and_strips_the_reference() {
    let server = start().await;
    let client = server.client();
    let cms: Api<ConfigMap> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();
    let owner = cms.create(&pp, &config_map("owner", &[])).await.unwrap();
    let other = cms.create(&pp, &config_map("other", &[])).await.unwrap();
    cms.create(&pp, &owned_config_map("only", vec![controller_of(&owner)]))
        .await
        .unwrap();
    let both = owned_config_map("both", vec![controller_of(&owner), reference_to(&other)]);
    cms.create(&pp, &both).await.unwrap();
    let before = server.current_resource_version();

    // kube sends the policy as DeleteOptions in the body.
    cms.delete("owner", &DeleteParams::orphan()).await.unwrap();
    assert_eq!(
        server
            .requests()
            .last()
            .and_then(|r| r.json_body())
            .map(|b| b["propagationPolicy"].clone()),
        Some(json!("Orphan"))
    );
    assert!(server.get_object(&format!("{CM_PATH}/owner")).is_none());
    assert_eq!(
        owner_uids(&server, &format!("{CM_PATH}/only")),
        Some(vec![])
    );
    assert_eq!(
        owner_uids(&server, &format!("{CM_PATH}/both")),
        Some(vec![other.uid().unwrap()])
    );
    assert_eq!(
        events_since(&cms, before).await,
        [
            ("DELETED".to_string(), "owner".to_string()),
            ("MODIFIED".into(), "both".into()),
            ("MODIFIED".into(), "only".into()),
        ]
    );

    // The query parameter works too.
    let second = cms.create(&pp, &config_map("second", &[])).await.unwrap();
    cms.create(&pp, &owned_config_map("left", vec![controller_of(&second)]))
        .await
        .unwrap();
    let request = hyper::Request::delete(format!("{CM_PATH}/second?propagationPolicy=Orphan"))
        .body(Vec::new())
        .unwrap();
    let _: Value = client.request(request).await.unwrap();
    assert!(server.get_object(&format!("{CM_PATH}/second")).is_none());
    assert_eq!(
        owner_uids(&server, &format!("{CM_PATH}/left")),
        Some(vec![])
    );

    // An owner waiting on a finalizer orphans at once, and its dependent outlives it.
    let mut slow = config_map("slow", &[]);
    slow.metadata.finalizers = Some(vec!["example.com/hold".into()]);
    let slow = cms.create(&pp, &slow).await.unwrap();
    cms.create(
        &pp,
        &owned_config_map("outlives", vec![controller_of(&slow)]),
    )
    .await
    .unwrap();
    cms.delete("slow", &DeleteParams::orphan()).await.unwrap();
    let outlives = format!("{CM_PATH}/outlives");
    assert_eq!(owner_uids(&server, &outlives), Some(vec![]));
    let finalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    cms.patch("slow", &PatchParams::default(), &finalize)
        .await
        .unwrap();
    assert!(server.get_object(&format!("{CM_PATH}/slow")).is_none());
    assert!(server.get_object(&outlives).is_some());

    // A policy the server does not know is refused before anything is deleted.
    let request = hyper::Request::delete(format!("{CM_PATH}/other"))
        .header("Content-Type", "application/json")
        .body(br#"{"propagationPolicy":"Eventually"}"#.to_vec())
        .unwrap();
    let refused: Result<Value, kube::Error> = client.request(request).await;
    assert_eq!(api_error(refused), (422, "Invalid".into()));
    assert!(server.get_object(&format!("{CM_PATH}/other")).is_some());
}

#[tokio::test]
async fn cluster_scoped_owners_own_across_namespaces_and_foreground_collects() {
    use k8s_openapi::api::core::v1::{Namespace, Node};
    let server = start().await;
    let client = server.client();
    let pp = PostParams::default();
    let mut node = Node::default();
    node.metadata.name = Some("n1".into());
    let node = Api::<Node>::all(client.clone())
        .create(&pp, &node)
        .await
        .unwrap();
    let mut ns = Namespace::default();
    ns.metadata.name = Some("other".into());
    Api::<Namespace>::all(client.clone())
        .create(&pp, &ns)
        .await
        .unwrap();
    for namespace in ["default", "other"] {
        Api::<ConfigMap>::namespaced(client.clone(), namespace)
            .create(&pp, &owned_config_map("on-n1", vec![controller_of(&node)]))
            .await
            .unwrap();
    }
    Api::<Node>::all(client.clone())
        .delete("n1", &DeleteParams::foreground())
        .await
        .unwrap();
    server
        .wait_for(
            WAIT,
            "the node's dependents in every namespace to go",
            |s| s.list_objects("/api/v1/configmaps").is_empty(),
        )
        .await;
}

#[tokio::test]
async fn jobs_orphan_their_pods_unless_asked_otherwise() {
    use k8s_openapi::api::batch::v1::Job;
    let server = start().await;
    let client = server.client();
    let jobs: Api<Job> = Api::default_namespaced(client.clone());
    let pods: Api<Pod> = Api::default_namespaced(client.clone());
    let pp = PostParams::default();
    for (job_name, pod_name, params) in [
        ("legacy", "orphaned", DeleteParams::default()),
        ("modern", "collected", DeleteParams::background()),
    ] {
        let mut job = Job::default();
        job.metadata.name = Some(job_name.into());
        let job = jobs.create(&pp, &job).await.unwrap();
        let mut pod = Pod::default();
        pod.metadata.name = Some(pod_name.into());
        pod.metadata.owner_references = Some(vec![controller_of(&job)]);
        pods.create(&pp, &pod).await.unwrap();
        jobs.delete(job_name, &params).await.unwrap();
    }
    server
        .wait_for(WAIT, "the background-deleted job's pod to go", |s| {
            s.get_object("/api/v1/namespaces/default/pods/collected")
                .is_none()
        })
        .await;
    assert_eq!(
        owner_uids(&server, "/api/v1/namespaces/default/pods/orphaned"),
        Some(vec![])
    );
}

#[tokio::test]
async fn owner_references_must_resolve_and_name_one_controller() {
    let server = start().await;
    let cms: Api<ConfigMap> = Api::default_namespaced(server.client());
    let pp = PostParams::default();
    let owner = cms.create(&pp, &config_map("owner", &[])).await.unwrap();
    let no_uid = OwnerReference {
        uid: String::new(),
        ..controller_of(&owner)
    };
    let refused = cms
        .create(&pp, &owned_config_map("no-uid", vec![no_uid]))
        .await;
    match refused {
        Err(kube::Error::Api(status)) => {
            assert_eq!(status.code, 422);
            assert!(
                status.message.contains("metadata.ownerReferences.uid"),
                "{}",
                status.message
            );
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    let twice = owned_config_map("twice", vec![controller_of(&owner), controller_of(&owner)]);
    assert_eq!(
        api_error(cms.create(&pp, &twice).await),
        (422, "Invalid".into())
    );
    let once = owned_config_map("once", vec![controller_of(&owner), reference_to(&owner)]);
    cms.create(&pp, &once).await.unwrap();
}
