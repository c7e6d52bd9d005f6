//! The RBAC in `deploy/` is exactly what tend uses. tend runs as deployed (every
//! namespace, leader election on a Lease in `tend-system`) through each way it touches
//! the API; then every request it made must be
//! allowed by the roles `kubectl kustomize deploy/` renders, bound to its ServiceAccount,
//! and every permission those roles grant must have been used. The same holds for the
//! example external agent (`examples/external-agent.sh`) and the Role its manifest
//! grants it.

mod support;

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::InstanceStateName;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, PostParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::checks::has_condition;
use support::fake_kube::RecordedRequest;
use support::manifests::{documents, kustomize};
use support::rig::{CONTROLLER_USER, NS, Rig};
use tend::api::{Phase, ReclaimPolicy, SecretKeyRef};

/// Permissions granted although the scenario below never needs them, each with why it
/// stays. Keep this list short: anything on it is privilege tend might not need.
const KEPT_UNUSED: &[(&str, &str, &str, &str)] = &[];

/// Paths every authenticated client may read through the default discovery roles.
const PUBLIC_PATHS: &[&str] = &["/version", "/healthz", "/livez", "/readyz", "/api", "/apis"];

/// Drives tend through everything it does with the API: an EC2 Workspace whose user
/// data comes from a Secret goes Online, is stopped and started, is healed after its
/// instance is terminated behind tend's back, and is deleted; then container
/// Workspaces go through the same life, with a lost node and both reclaim policies;
/// and an external one awaits its agent, loses its heartbeat and gets it back.
async fn controller_requests() -> Vec<RecordedRequest> {
    let mut rig = Rig::new().await;
    // As deployed: tend watches every namespace, and elects its leader on a Lease in
    // its own namespace.
    rig.args.namespace = None;
    rig.args.leader_election = true;
    rig.args.lease_namespace = Some("tend-system".into());
    let namespaces: Api<Namespace> = Api::all(rig.kube.client());
    let namespace: Namespace =
        serde_json::from_value(json!({"metadata": {"name": "tend-system"}})).unwrap();
    namespaces
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    rig.start_controller().await;

    let secrets: Api<Secret> = Api::namespaced(rig.kube.client(), NS);
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "dev-init"},
        "data": {"userData": "IyEvYmluL3NoCg=="},
    }))
    .unwrap();
    secrets
        .create(&PostParams::default(), &secret)
        .await
        .unwrap();
    let mut ws = rig.ec2_workspace("dev");
    ws.spec.ec2.as_mut().unwrap().user_data = Some(SecretKeyRef {
        name: "dev-init".into(),
        key: None,
    });
    rig.create(&ws).await;
    let online = rig.wait_phase("dev", Phase::Online).await;
    let first = online.status.unwrap().instance_id.unwrap();

    rig.patch_spec("dev", json!({"desiredState": "Stopped"}))
        .await;
    rig.wait_phase("dev", Phase::Stopped).await;
    rig.patch_spec("dev", json!({"desiredState": "Running"}))
        .await;
    rig.wait_phase("dev", Phase::Online).await;

    rig.moto.terminate(&first).await;
    let healed = rig
        .wait_ws("dev", "healed on a new instance", |w| {
            w.status.as_ref().is_some_and(|s| {
                s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&first)
            })
        })
        .await;
    let second = healed.status.unwrap().instance_id.unwrap();

    rig.delete("dev").await;
    rig.wait_gone("dev").await;
    let instance = rig.moto.instance(&second).await.unwrap();
    assert_eq!(
        instance.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );

    // A container Workspace: Online on a Pod with its claim, healed after
    // the Pod fails, seen through a lost node, stopped, started, and deleted
    // with the claim retained; a second one deletes its claim.
    let kubelet = rig.kubelet();
    kubelet.node("node-a", "True").await;
    rig.create(&rig.container_workspace("box")).await;
    rig.wait_pod("box-1").await;
    kubelet.run("box-1", "node-a").await;
    rig.wait_phase("box", Phase::Online).await;
    kubelet.fail("box-1", 1, "Error").await;
    rig.wait_pod("box-2").await;
    kubelet.run("box-2", "node-a").await;
    rig.wait_ws("box", "healed on a new Pod", |w| {
        w.status
            .as_ref()
            .is_some_and(|s| s.phase == Some(Phase::Online) && s.restarts == 1)
    })
    .await;
    kubelet.set_ready("node-a", "Unknown").await;
    rig.wait_ws("box", "the lost node seen", |w| {
        has_condition(w, "BackendRunning", "Unknown", "ObservationFailed")
    })
    .await;
    kubelet.set_ready("node-a", "True").await;
    rig.patch_spec("box", json!({"desiredState": "Stopped"}))
        .await;
    rig.wait_phase("box", Phase::Stopped).await;
    rig.patch_spec("box", json!({"desiredState": "Running"}))
        .await;
    rig.wait_pod("box-3").await;
    kubelet.run("box-3", "node-a").await;
    rig.wait_phase("box", Phase::Online).await;
    rig.delete("box").await;
    rig.wait_gone("box").await;
    let mut scratch = rig.container_workspace("scratch");
    if let Some(volume) = scratch
        .spec
        .container
        .as_mut()
        .and_then(|c| c.volume.as_mut())
    {
        volume.reclaim_policy = ReclaimPolicy::Delete;
    }
    rig.create(&scratch).await;
    rig.wait_pod("scratch-1").await;
    kubelet.run("scratch-1", "node-a").await;
    rig.wait_phase("scratch", Phase::Online).await;
    rig.delete("scratch").await;
    rig.wait_gone("scratch").await;

    // An external Workspace: awaits its agent, Online on the first heartbeat,
    // Offline when the Lease goes, Online on renewal, deleted.
    rig.create(&rig.external_workspace("laptop", 30)).await;
    rig.wait_phase("laptop", Phase::AwaitingAgent).await;
    let agent = rig.agent("laptop");
    agent.beat().await;
    rig.wait_phase("laptop", Phase::Online).await;
    let leases: Api<Lease> = Api::namespaced(rig.kube.client(), NS);
    leases.delete("laptop", &Default::default()).await.unwrap();
    rig.wait_phase("laptop", Phase::Offline).await;
    agent.beat().await;
    rig.wait_phase("laptop", Phase::Online).await;
    rig.delete("laptop").await;
    rig.wait_gone("laptop").await;
    rig.crash_controller().await;
    rig.kube
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(CONTROLLER_USER))
        .collect()
}

/// One RBAC policy rule.
#[derive(Debug, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
struct Rule {
    api_groups: Vec<String>,
    resources: Vec<String>,
    verbs: Vec<String>,
    resource_names: Vec<String>,
    #[serde(rename = "nonResourceURLs")]
    non_resource_urls: Vec<String>,
}

/// A rule bound to tend: in one namespace (a RoleBinding) or everywhere (a
/// ClusterRoleBinding).
#[derive(Debug)]
struct Grant {
    namespace: Option<String>,
    source: String,
    rule: Rule,
}

fn listed(list: &[String], item: &str) -> bool {
    list.iter().any(|x| x == "*" || x == item)
}

impl Grant {
    fn allows(&self, request: &RecordedRequest) -> bool {
        let rule = &self.rule;
        let Some(target) = &request.resource else {
            return rule.non_resource_urls.iter().any(|u| {
                u == "*"
                    || *u == request.path
                    || u.strip_suffix('*')
                        .is_some_and(|p| request.path.starts_with(p))
            }) && listed(&rule.verbs, &request.verb);
        };
        let resource = match &target.subresource {
            Some(sub) => format!("{}/{sub}", target.resource),
            None => target.resource.clone(),
        };
        let in_scope = self.namespace.is_none() || self.namespace == target.namespace;
        in_scope
            && listed(&rule.api_groups, &target.group)
            && listed(&rule.resources, &resource)
            && listed(&rule.verbs, &request.verb)
            && (rule.resource_names.is_empty()
                || target
                    .name
                    .as_ref()
                    .is_some_and(|n| rule.resource_names.contains(n)))
    }
}

/// Whether a binding subject is this ServiceAccount user (directly, or through a
/// group it is in).
fn names(subject: &Value, user: &str) -> bool {
    let (namespace, account) = user
        .strip_prefix("system:serviceaccount:")
        .and_then(|rest| rest.split_once(':'))
        .expect("a ServiceAccount user");
    let name = subject["name"].as_str().unwrap_or_default();
    match subject["kind"].as_str() {
        Some("ServiceAccount") => name == account && subject["namespace"] == namespace,
        Some("User") => name == user,
        Some("Group") => [
            "system:authenticated".to_string(),
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{namespace}"),
        ]
        .contains(&name.to_string()),
        _ => false,
    }
}

/// Every rule these objects bind to `user`.
fn grants_to(objects: &[Value], user: &str) -> Vec<Grant> {
    let rules =
        |o: &Value| -> Vec<Rule> { serde_json::from_value(o["rules"].clone()).unwrap_or_default() };
    let mut cluster_roles = BTreeMap::new();
    let mut roles = BTreeMap::new();
    for o in objects {
        let name = o["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let namespace = o["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        match o["kind"].as_str() {
            Some("ClusterRole") => {
                cluster_roles.insert(name, o.clone());
            }
            Some("Role") => {
                roles.insert((namespace, name), o.clone());
            }
            _ => {}
        }
    }
    let mut grants = Vec::new();
    for binding in objects {
        let kind = binding["kind"].as_str().unwrap_or_default();
        if !matches!(kind, "ClusterRoleBinding" | "RoleBinding") {
            continue;
        }
        let subjects = binding["subjects"].as_array().cloned().unwrap_or_default();
        if !subjects.iter().any(|s| names(s, user)) {
            continue;
        }
        let namespace = (kind == "RoleBinding").then(|| {
            binding["metadata"]["namespace"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
        let role_name = binding["roleRef"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let role = match binding["roleRef"]["kind"].as_str() {
            Some("ClusterRole") => cluster_roles.get(&role_name),
            Some("Role") if kind == "RoleBinding" => {
                roles.get(&(namespace.clone().unwrap_or_default(), role_name.clone()))
            }
            _ => None,
        };
        let role = role.unwrap_or_else(|| panic!("{kind} binds a missing role {role_name}"));
        let source = format!(
            "{} {}",
            role["kind"].as_str().unwrap_or_default(),
            role_name
        );
        for rule in rules(role) {
            grants.push(Grant {
                namespace: namespace.clone(),
                source: source.clone(),
                rule,
            });
        }
    }
    grants
}

/// A request as the permission it needs: `verb group/resource[/subresource] in namespace`.
fn permission(r: &RecordedRequest) -> String {
    match &r.resource {
        None => format!("{} {}", r.verb, r.path),
        Some(t) => format!(
            "{} {}/{}{} in {}",
            r.verb,
            t.group,
            t.resource,
            t.subresource
                .as_ref()
                .map(|s| format!("/{s}"))
                .unwrap_or_default(),
            t.namespace.as_deref().unwrap_or("every namespace"),
        ),
    }
}

#[tokio::test]
async fn deploy_rbac_allows_what_tend_does_and_nothing_more() {
    let grants = grants_to(&kustomize("deploy/"), CONTROLLER_USER);
    let requests = controller_requests().await;
    assert!(
        requests.iter().any(|r| r.verb == "watch"),
        "the controller's requests were recorded"
    );
    exactly("deploy/", &grants, &requests, KEPT_UNUSED);
}

/// Who the example agent runs as: the ServiceAccount its manifest creates.
const AGENT_USER: &str = "system:serviceaccount:default:carol-laptop-agent";

#[tokio::test]
async fn the_example_agent_is_allowed_what_it_does_and_nothing_more() {
    let rig = Rig::start().await;
    rig.create(&rig.external_workspace("carol-laptop", 30))
        .await;
    rig.wait_phase("carol-laptop", Phase::AwaitingAgent).await;
    // The fake API server runs on this test's runtime: the agent must not block it.
    let beat = || async {
        tokio::process::Command::new(support::paths::project_path("examples/external-agent.sh"))
            .args(["carol-laptop", NS])
            .env("TEND_API", rig.kube.url())
            .env("TEND_TOKEN", AGENT_USER)
            .env("TEND_HOLDER", "carol-laptop.local")
            .env("TEND_ONCE", "1")
            .output()
            .await
            .expect("the agent runs")
    };
    // The first heartbeat creates the Lease; the next one renews it.
    let first = beat().await;
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let online = rig.wait_phase("carol-laptop", Phase::Online).await;
    assert_eq!(
        online.status.unwrap().backend.as_deref(),
        Some("carol-laptop")
    );
    let lease = rig
        .kube
        .get_object("/apis/coordination.k8s.io/v1/namespaces/default/leases/carol-laptop")
        .expect("the agent created its Lease");
    assert_eq!(
        lease["metadata"]["labels"]["tend.dev/workspace"],
        "carol-laptop"
    );
    assert_eq!(lease["spec"]["holderIdentity"], "carol-laptop.local");
    // Renewing is a patch of the same Lease, answered 2xx (or the agent fails).
    let renewed = beat().await;
    assert!(
        renewed.status.success(),
        "{}",
        String::from_utf8_lossy(&renewed.stderr)
    );

    let manifest =
        std::fs::read_to_string(support::paths::project_path("examples/external-agent.yaml"))
            .unwrap();
    let grants = grants_to(&documents(&manifest), AGENT_USER);
    let requests: Vec<RecordedRequest> = rig
        .kube
        .requests()
        .into_iter()
        .filter(|r| r.user.as_deref() == Some(AGENT_USER))
        .collect();
    assert_eq!(requests.len(), 3, "patch (not found), create, patch");
    exactly("examples/external-agent.yaml", &grants, &requests, &[]);
}

/// Every request is allowed by `grants`, and every permission they grant
/// was used (or is kept, with the reason).
fn exactly(
    source: &str,
    grants: &[Grant],
    requests: &[RecordedRequest],
    kept_unused: &[(&str, &str, &str, &str)],
) {
    let denied: BTreeSet<String> = requests
        .iter()
        .filter(|r| {
            let public = r.resource.is_none() && PUBLIC_PATHS.contains(&r.path.as_str());
            !public && !grants.iter().any(|g| g.allows(r))
        })
        .map(permission)
        .collect();
    assert!(
        denied.is_empty(),
        "{source} does not allow what is done:\n{}",
        denied.into_iter().collect::<Vec<_>>().join("\n")
    );

    let mut unused = BTreeSet::new();
    for grant in grants {
        let rule = &grant.rule;
        let wildcard = [&rule.api_groups, &rule.resources, &rule.verbs]
            .iter()
            .any(|list| list.iter().any(|x| x.contains('*')));
        assert!(
            !wildcard,
            "{}: wildcards grant more than is used: {rule:?}",
            grant.source
        );
        for group in &rule.api_groups {
            for resource in &rule.resources {
                for verb in &rule.verbs {
                    let used = requests.iter().any(|r| {
                        let Grant { namespace, .. } = grant;
                        r.verb == *verb
                            && r.resource.as_ref().is_some_and(|t| {
                                let full = match &t.subresource {
                                    Some(s) => format!("{}/{s}", t.resource),
                                    None => t.resource.clone(),
                                };
                                t.group == *group
                                    && full == *resource
                                    && (namespace.is_none() || *namespace == t.namespace)
                            })
                    });
                    let kept = kept_unused
                        .iter()
                        .any(|(g, res, v, _)| g == group && res == resource && v == verb);
                    if !used && !kept {
                        unused.insert(format!("{}: {verb} {group}/{resource}", grant.source));
                    }
                }
            }
        }
    }
    for (group, resource, verb, why) in kept_unused {
        let granted = grants.iter().any(|g| {
            [
                (&g.rule.api_groups, group),
                (&g.rule.resources, resource),
                (&g.rule.verbs, verb),
            ]
            .iter()
            .all(|(list, item)| list.iter().any(|x| x == *item))
        });
        assert!(
            granted,
            "the kept list keeps {verb} {group}/{resource} ({why}), which {source} no longer grants"
        );
    }
    assert!(
        unused.is_empty(),
        "{source} grants what is never used (remove it, or keep it with the reason):\n{}",
        unused.into_iter().collect::<Vec<_>>().join("\n")
    );
}
