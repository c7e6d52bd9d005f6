//! Resource addressing, type metadata, selection and `Status` errors.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Value, json};

use super::field::FieldError;
use super::select::{FieldSelector, LabelSelector};

/// Parsed query parameters (last value wins).
pub(crate) type Query = BTreeMap<String, String>;

/// An error answered as a `Status` object.
#[derive(Debug, Clone)]
pub(crate) struct ApiError {
    pub code: u16,
    pub reason: String,
    pub message: String,
    pub details: Option<Value>,
}

impl ApiError {
    pub(crate) fn new(code: u16, reason: &str, message: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.to_string(),
            message: message.into(),
            details: None,
        }
    }

    fn with_details(mut self, t: &Target, name: &str) -> Self {
        let mut details = json!({"name": name, "kind": t.plural});
        if !t.group.is_empty() {
            details["group"] = Value::String(t.group.clone());
        }
        self.details = Some(details);
        self
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "BadRequest", message)
    }

    pub(crate) fn not_found(t: &Target, name: &str) -> Self {
        Self::new(
            404,
            "NotFound",
            format!("{} \"{name}\" not found", t.group_resource()),
        )
        .with_details(t, name)
    }

    pub(crate) fn no_route() -> Self {
        Self::new(
            404,
            "NotFound",
            "the server could not find the requested resource",
        )
    }

    pub(crate) fn method_not_allowed(method: &str) -> Self {
        Self::new(
            405,
            "MethodNotAllowed",
            format!("the server does not allow this method on the requested resource: {method}"),
        )
    }

    pub(crate) fn already_exists(t: &Target, name: &str) -> Self {
        Self::new(
            409,
            "AlreadyExists",
            format!("{} \"{name}\" already exists", t.group_resource()),
        )
        .with_details(t, name)
    }

    pub(crate) fn conflict(t: &Target, name: &str, why: &str) -> Self {
        Self::new(
            409,
            "Conflict",
            format!(
                "Operation cannot be fulfilled on {} \"{name}\": {why}",
                t.group_resource()
            ),
        )
        .with_details(t, name)
    }

    /// 422 `Invalid` naming every offending field, with one `cause` per field, as the
    /// server's field validation answers.
    pub(crate) fn invalid(t: &Target, kind: &str, name: &str, errors: &[FieldError]) -> Self {
        let qualified = if t.group.is_empty() {
            kind.to_string()
        } else {
            format!("{kind}.{}", t.group)
        };
        let why = match errors {
            [one] => one.to_string(),
            many => format!(
                "[{}]",
                many.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        let mut details = json!({
            "name": name,
            "kind": kind,
            "causes": errors.iter().map(FieldError::cause).collect::<Vec<_>>(),
        });
        if !t.group.is_empty() {
            details["group"] = Value::String(t.group.clone());
        }
        let mut error = Self::new(
            422,
            "Invalid",
            format!("{qualified} \"{name}\" is invalid: {why}"),
        );
        error.details = Some(details);
        error
    }

    pub(crate) fn unsupported_media_type(message: impl Into<String>) -> Self {
        Self::new(415, "UnsupportedMediaType", message)
    }

    pub(crate) fn expired(message: impl Into<String>) -> Self {
        Self::new(410, "Expired", message)
    }

    pub(crate) fn to_status(&self) -> Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if let Some(details) = &self.details {
            status["details"] = details.clone();
        }
        status
    }
}

/// An HTTP status with a JSON body, or an error.
pub(crate) type Reply = Result<(u16, Value), ApiError>;

/// Identity of a stored resource type; versions of one group share storage.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct TypeKey {
    pub group: String,
    pub plural: String,
}

/// What a request path addresses.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub group: String,
    pub version: String,
    pub plural: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
    pub subresource: Option<String>,
}

impl Target {
    /// Parses `/api/v1/...` and `/apis/{group}/{version}/...` resource paths.
    pub(crate) fn parse(path: &str) -> Option<Target> {
        let segs: Vec<&str> = path.trim_end_matches('/').split('/').skip(1).collect();
        if segs.iter().any(|s| s.is_empty()) {
            return None;
        }
        let (group, version, rest) = match segs.as_slice() {
            ["api", version, rest @ ..] => ("", *version, rest),
            ["apis", group, version, rest @ ..] => (*group, *version, rest),
            _ => return None,
        };
        let namespace_sub = |s: &str| group.is_empty() && matches!(s, "status" | "finalize");
        let (namespace, plural, tail) = match rest {
            ["namespaces", ns, plural, tail @ ..] if !namespace_sub(plural) => {
                (Some(*ns), *plural, tail)
            }
            [plural, tail @ ..] => (None, *plural, tail),
            [] => return None,
        };
        if tail.len() > 2 {
            return None;
        }
        Some(Target {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            namespace: namespace.map(str::to_string),
            name: tail.first().map(|s| s.to_string()),
            subresource: tail.get(1).map(|s| s.to_string()),
        })
    }

    pub(crate) fn key(&self) -> TypeKey {
        TypeKey {
            group: self.group.clone(),
            plural: self.plural.clone(),
        }
    }

    pub(crate) fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    /// `pods` or `workspaces.tend.dev`, as error messages name resources.
    pub(crate) fn group_resource(&self) -> String {
        if self.group.is_empty() {
            self.plural.clone()
        } else {
            format!("{}.{}", self.plural, self.group)
        }
    }
}

/// How a resource type behaves.
#[derive(Debug, Clone)]
pub(crate) struct TypeInfo {
    pub kind: String,
    pub namespaced: bool,
    pub status_subresource: bool,
    pub tracks_generation: bool,
    /// The `openAPIV3Schema` of a custom resource's version; built-in kinds have none.
    pub schema: Option<Arc<Value>>,
    /// Names the CRD revision and version the schema comes from, so work derived from
    /// it can be cached.
    pub schema_id: String,
    /// Whether the CRD's CEL rules are enforced (API servers 1.25 and later).
    pub cel: bool,
}

/// A built-in kind: its name, scope and whether it has a `status` subresource.
pub(crate) struct Builtin {
    pub kind: &'static str,
    pub namespaced: bool,
    pub status: bool,
}

/// The built-in kinds the server knows; other resources exist only through a CRD.
pub(crate) fn builtin(group: &str, plural: &str) -> Option<Builtin> {
    let (kind, namespaced, status) = match (group, plural) {
        ("", "pods") => ("Pod", true, true),
        ("", "secrets") => ("Secret", true, false),
        ("", "configmaps") => ("ConfigMap", true, false),
        ("", "services") => ("Service", true, true),
        ("", "serviceaccounts") => ("ServiceAccount", true, false),
        ("", "persistentvolumeclaims") => ("PersistentVolumeClaim", true, true),
        ("", "events") => ("Event", true, false),
        ("", "endpoints") => ("Endpoints", true, false),
        ("", "persistentvolumes") => ("PersistentVolume", false, true),
        ("", "nodes") => ("Node", false, true),
        ("", "namespaces") => ("Namespace", false, true),
        ("events.k8s.io", "events") => ("Event", true, false),
        ("coordination.k8s.io", "leases") => ("Lease", true, false),
        ("apps", "deployments") => ("Deployment", true, true),
        ("apps", "statefulsets") => ("StatefulSet", true, true),
        ("apps", "replicasets") => ("ReplicaSet", true, true),
        ("apps", "daemonsets") => ("DaemonSet", true, true),
        ("batch", "jobs") => ("Job", true, true),
        ("batch", "cronjobs") => ("CronJob", true, true),
        ("policy", "poddisruptionbudgets") => ("PodDisruptionBudget", true, true),
        ("networking.k8s.io", "ingresses") => ("Ingress", true, true),
        ("networking.k8s.io", "networkpolicies") => ("NetworkPolicy", true, false),
        ("discovery.k8s.io", "endpointslices") => ("EndpointSlice", true, false),
        ("rbac.authorization.k8s.io", "roles") => ("Role", true, false),
        ("rbac.authorization.k8s.io", "rolebindings") => ("RoleBinding", true, false),
        ("rbac.authorization.k8s.io", "clusterroles") => ("ClusterRole", false, false),
        ("rbac.authorization.k8s.io", "clusterrolebindings") => {
            ("ClusterRoleBinding", false, false)
        }
        ("storage.k8s.io", "storageclasses") => ("StorageClass", false, false),
        ("apiextensions.k8s.io", "customresourcedefinitions") => {
            ("CustomResourceDefinition", false, true)
        }
        _ => return None,
    };
    Some(Builtin {
        kind,
        namespaced,
        status,
    })
}

/// Which objects a list or watch selects, and how it renders them.
#[derive(Debug, Clone)]
pub(crate) struct Filter {
    pub labels: LabelSelector,
    pub fields: FieldSelector,
    /// `Accept: ...;as=PartialObjectMetadata`: only metadata is returned.
    pub partial: bool,
}

impl Filter {
    pub(crate) fn from_query(q: &Query, accept: &str) -> Result<Filter, ApiError> {
        let labels = LabelSelector::parse(q.get("labelSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        let fields = FieldSelector::parse(q.get("fieldSelector").map(String::as_str).unwrap_or(""))
            .map_err(ApiError::bad_request)?;
        Ok(Filter {
            labels,
            fields,
            partial: accept.contains("as=PartialObjectMetadata"),
        })
    }

    pub(crate) fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    pub(crate) fn render(&self, obj: &Value) -> Value {
        if self.partial {
            partial_metadata(obj)
        } else {
            obj.clone()
        }
    }
}

/// The `PartialObjectMetadata` form metadata-only clients ask for.
pub(crate) fn partial_metadata(obj: &Value) -> Value {
    json!({
        "apiVersion": "meta.k8s.io/v1",
        "kind": "PartialObjectMetadata",
        "metadata": obj.get("metadata").cloned().unwrap_or_else(|| json!({})),
    })
}
