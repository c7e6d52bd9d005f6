//! Object storage, resource versions and watch history of the fake API server.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde_json::{Map, Value, json};
use tokio::sync::{Notify, broadcast};

use super::crd::{self, CRD_GROUP, CRD_PLURAL};
use super::resource::{ApiError, Filter, Query, Reply, Target, TypeInfo, TypeKey, builtin};
use super::{Failure, RecordedRequest};

/// The cluster the server pretends to be.
#[derive(Clone, Debug)]
pub struct FakeConfig {
    /// CustomResourceDefinitions installed at start, as JSON objects. Custom resources
    /// exist only through a CRD, as on a real server; the default installs tend's.
    pub crds: Vec<Value>,
    /// The Kubernetes minor version (1.x). CRD CEL rules are enforced from 1.25 on.
    pub minor: u32,
    /// Watch events kept per resource type; older ones answer 410 Expired.
    pub history_limit: usize,
    /// How often a watch that allows bookmarks receives one.
    pub bookmark_interval: Duration,
}

impl Default for FakeConfig {
    fn default() -> Self {
        let tend_crd = serde_yaml::from_str(&tend::crd_yaml()).expect("tend's CRD parses");
        Self {
            crds: vec![tend_crd],
            minor: 37,
            history_limit: 1000,
            bookmark_interval: Duration::from_secs(5),
        }
    }
}

/// Type of a stored change, as watch events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChangeType {
    Added,
    Modified,
    Deleted,
}

/// One committed write, kept in history and fanned out to watches.
#[derive(Debug)]
pub(crate) struct Change {
    pub key: TypeKey,
    pub rv: u64,
    pub change: ChangeType,
    pub namespace: String,
    pub object: Value,
    /// The state before a modification, so filtered watches can turn it into ADDED/DELETED.
    pub previous: Option<Value>,
}

/// Messages to open watch streams.
#[derive(Debug, Clone)]
pub(crate) enum Msg {
    Change(Arc<Change>),
    CloseWatches,
}

#[derive(Default)]
pub(crate) struct TypeState {
    pub objects: BTreeMap<(String, String), Value>,
    pub history: VecDeque<Arc<Change>>,
    pub compacted_through: u64,
}

/// Everything behind the lock.
pub(crate) struct State {
    pub rv: u64,
    pub config: FakeConfig,
    pub types: BTreeMap<TypeKey, TypeState>,
    pub requests: Vec<RecordedRequest>,
    pub failures: Vec<Failure>,
    /// CEL rules a write needed but the evaluator could not run.
    pub unevaluated_rules: BTreeSet<String>,
    /// Events at or below this revision may be gone for every type.
    pub compacted_through: u64,
    pub tx: broadcast::Sender<Msg>,
    seed: u64,
}

/// State shared by the server tasks and the test-facing handle.
pub(crate) struct Shared {
    pub state: Mutex<State>,
    pub changed: Notify,
}

impl Shared {
    pub(crate) fn new(config: FakeConfig) -> Self {
        let (tx, _) = broadcast::channel(4096);
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0x5eed);
        let mut state = State {
            rv: 100,
            config,
            types: BTreeMap::new(),
            requests: Vec::new(),
            failures: Vec::new(),
            unevaluated_rules: BTreeSet::new(),
            compacted_through: 0,
            tx,
            seed,
        };
        // The namespaces every cluster starts with, then the installed CRDs.
        let namespaces = Target::parse("/api/v1/namespaces").expect("namespaces path parses");
        for name in ["default", "kube-node-lease", "kube-public", "kube-system"] {
            let namespace = json!({
                "apiVersion": "v1",
                "kind": "Namespace",
                "metadata": {"name": name, "labels": {"kubernetes.io/metadata.name": name}},
                "spec": {"finalizers": ["kubernetes"]},
                "status": {"phase": "Active"},
            });
            state
                .create(&namespaces, &Query::new(), namespace)
                .expect("a cluster's own namespace is created");
        }
        let crds =
            Target::parse(&format!("/apis/{CRD_GROUP}/v1/{CRD_PLURAL}")).expect("CRD path parses");
        for definition in state.config.crds.clone() {
            if let Err(e) = state.create(&crds, &Query::new(), definition) {
                panic!("fake API server: installing a CRD: {}", e.message);
            }
        }
        Self {
            state: Mutex::new(state),
            changed: Notify::new(),
        }
    }

    /// Locks the state; a panic elsewhere must not wedge every later request.
    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub(crate) fn now_rfc3339() -> String {
    jiff::Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%SZ")
        .to_string()
}

pub(crate) fn meta(obj: &Value, field: &str) -> Option<String> {
    obj.get("metadata")?
        .get(field)?
        .as_str()
        .map(str::to_string)
}

pub(crate) fn meta_mut(obj: &mut Value) -> &mut Map<String, Value> {
    if !obj.get("metadata").is_some_and(Value::is_object) {
        obj["metadata"] = json!({});
    }
    match obj.get_mut("metadata") {
        Some(Value::Object(m)) => m,
        _ => unreachable!("metadata was just made an object"),
    }
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj.pointer("/metadata/finalizers")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_string)
                .collect()
        })
        .unwrap_or_default()
}

impl State {
    pub(crate) fn namespace_exists(&self, ns: &str) -> bool {
        let key = TypeKey {
            group: String::new(),
            plural: "namespaces".into(),
        };
        self.stored(&key, "", ns).is_some()
    }

    /// How the addressed resource type behaves: a built-in kind, or one a stored CRD
    /// serves in the addressed version. Anything else has no route (404).
    pub(crate) fn info(&self, t: &Target) -> Result<TypeInfo, ApiError> {
        if let Some(b) = builtin(&t.group, &t.plural) {
            let untracked_groups = [
                "",
                "events.k8s.io",
                "coordination.k8s.io",
                "rbac.authorization.k8s.io",
                "storage.k8s.io",
            ];
            return Ok(TypeInfo {
                kind: b.kind.to_string(),
                namespaced: b.namespaced,
                status_subresource: b.status,
                tracks_generation: b.status || !untracked_groups.contains(&t.group.as_str()),
                schema: None,
                schema_id: String::new(),
                cel: false,
            });
        }
        let crds = TypeKey {
            group: CRD_GROUP.into(),
            plural: CRD_PLURAL.into(),
        };
        self.stored(&crds, "", &format!("{}.{}", t.plural, t.group))
            .and_then(|definition| crd::type_info(definition, &t.version, self.config.minor))
            .ok_or_else(ApiError::no_route)
    }

    /// Checks that the path's scope fits the resource, answering 404 like a missing route.
    pub(crate) fn check_scope(&self, t: &Target, info: &TypeInfo) -> Result<(), ApiError> {
        let ok = match (&t.namespace, &t.name) {
            (Some(_), _) => info.namespaced,
            (None, Some(_)) => !info.namespaced,
            (None, None) => true,
        };
        let sub_ok = match t.subresource.as_deref() {
            None => true,
            Some("status") => info.status_subresource,
            Some(_) => false,
        };
        if ok && sub_ok {
            Ok(())
        } else {
            Err(ApiError::no_route())
        }
    }

    pub(crate) fn random(&mut self) -> u64 {
        // SplitMix64: enough entropy for uids and generated names.
        self.seed = self.seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.seed;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn uid(&mut self) -> String {
        let (a, b) = (self.random(), self.random());
        let hex = format!("{a:016x}{b:016x}");
        format!(
            "{}-{}-4{}-{}{}-{}",
            &hex[0..8],
            &hex[8..12],
            &hex[13..16],
            ["8", "9", "a", "b"][(b & 3) as usize],
            &hex[17..20],
            &hex[20..32]
        )
    }

    /// Renders a stored object as the request's API version addresses it; custom
    /// resources are pruned and defaulted on every read, as the server does.
    pub(crate) fn present(t: &Target, info: &TypeInfo, obj: &Value) -> Value {
        let mut out = obj.clone();
        if let Some(schema) = &info.schema {
            crd::normalize(&mut out, schema);
        }
        out["apiVersion"] = Value::String(t.api_version());
        out["kind"] = Value::String(info.kind.clone());
        out
    }

    pub(crate) fn stored(&self, key: &TypeKey, ns: &str, name: &str) -> Option<&Value> {
        self.types
            .get(key)?
            .objects
            .get(&(ns.to_string(), name.to_string()))
    }

    /// Records a write: bumps the global resourceVersion, stores it, keeps history and notifies watches.
    pub(crate) fn commit(
        &mut self,
        key: &TypeKey,
        change: ChangeType,
        mut obj: Value,
        previous: Option<Value>,
    ) -> Value {
        self.rv += 1;
        let rv = self.rv;
        meta_mut(&mut obj).insert("resourceVersion".into(), Value::String(rv.to_string()));
        let ns = meta(&obj, "namespace").unwrap_or_default();
        let name = meta(&obj, "name").unwrap_or_default();
        let limit = self.config.history_limit.max(1);
        let ts = self.types.entry(key.clone()).or_default();
        if change == ChangeType::Deleted {
            ts.objects.remove(&(ns.clone(), name));
        } else {
            ts.objects.insert((ns.clone(), name), obj.clone());
        }
        let entry = Arc::new(Change {
            key: key.clone(),
            rv,
            change,
            namespace: ns,
            object: obj.clone(),
            previous,
        });
        ts.history.push_back(entry.clone());
        while ts.history.len() > limit {
            if let Some(old) = ts.history.pop_front() {
                ts.compacted_through = ts.compacted_through.max(old.rv);
            }
        }
        // No receivers is fine: nobody is watching.
        let _ = self.tx.send(Msg::Change(entry));
        obj
    }

    pub(crate) fn get(&self, t: &Target) -> Reply {
        let key = t.key();
        let info = self.info(t)?;
        self.check_scope(t, &info)?;
        let name = t.name.as_deref().unwrap_or_default();
        let ns = t.namespace.as_deref().unwrap_or_default();
        let obj = self
            .stored(&key, ns, name)
            .ok_or_else(|| ApiError::not_found(t, name))?;
        Ok((200, Self::present(t, &info, obj)))
    }

    /// Objects of the target collection (all namespaces when none is given), in key order.
    pub(crate) fn collection(&self, t: &Target) -> Vec<&Value> {
        let Some(ts) = self.types.get(&t.key()) else {
            return Vec::new();
        };
        ts.objects
            .iter()
            .filter(|((ns, _), _)| t.namespace.as_ref().is_none_or(|want| want == ns))
            .map(|(_, v)| v)
            .collect()
    }

    pub(crate) fn list(&self, t: &Target, q: &Query, filter: &Filter) -> Reply {
        let info = self.info(t)?;
        self.check_scope(t, &info)?;
        let limit = q
            .get("limit")
            .and_then(|l| l.parse::<usize>().ok())
            .filter(|l| *l > 0);
        let (list_rv, after) = match q.get("continue").filter(|c| !c.is_empty()) {
            Some(token) => {
                let (rv, key) = token
                    .split_once(':')
                    .and_then(|(rv, key)| Some((rv.parse::<u64>().ok()?, key.split_once('/')?)))
                    .ok_or_else(|| ApiError::bad_request("continue key is not valid"))?;
                (rv, Some((key.0.to_string(), key.1.to_string())))
            }
            None => (self.rv, None),
        };
        let matching: Vec<&Value> = self
            .collection(t)
            .into_iter()
            .filter(|o| filter.matches(o))
            .filter(|o| {
                after.as_ref().is_none_or(|(ns, name)| {
                    (
                        meta(o, "namespace").unwrap_or_default(),
                        meta(o, "name").unwrap_or_default(),
                    ) > (ns.clone(), name.clone())
                })
            })
            .collect();
        let mut list_meta = json!({"resourceVersion": list_rv.to_string()});
        let page: Vec<&Value> = match limit {
            Some(limit) if matching.len() > limit => {
                let last = matching[limit - 1];
                list_meta["continue"] = Value::String(format!(
                    "{list_rv}:{}/{}",
                    meta(last, "namespace").unwrap_or_default(),
                    meta(last, "name").unwrap_or_default()
                ));
                list_meta["remainingItemCount"] = json!(matching.len() - limit);
                matching[..limit].to_vec()
            }
            _ => matching,
        };
        let items: Vec<Value> = page
            .into_iter()
            .map(|o| filter.render(&Self::present(t, &info, o)))
            .collect();
        let (api_version, kind) = if filter.partial {
            (
                "meta.k8s.io/v1".to_string(),
                "PartialObjectMetadataList".to_string(),
            )
        } else {
            (t.api_version(), format!("{}List", info.kind))
        };
        Ok((
            200,
            json!({"apiVersion": api_version, "kind": kind, "metadata": list_meta, "items": items}),
        ))
    }

    /// Forgets all retained watch history, as etcd compaction does.
    pub(crate) fn compact(&mut self) {
        self.compacted_through = self.rv;
        for ts in self.types.values_mut() {
            ts.history.clear();
            ts.compacted_through = self.rv;
        }
    }
}
