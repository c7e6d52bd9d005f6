//! Provisioning an ec2 Workspace safely: idempotency tokens, tags the IAM
//! policy can rely on, a deterministic replacement subnet, teardown from what
//! tend recorded and tagged, and data volumes that go wrong being shown
//! rather than looped on.

#[path = "ec2_provisioning/iam.rs"]
mod iam;
mod support;
#[path = "ec2_provisioning/teardown.rs"]
mod teardown;
#[path = "ec2_provisioning/volume_trouble.rs"]
mod volume_trouble;

use aws_sdk_ec2::types::Volume;
use serde_json::json;
use support::faults::{Call, FaultRule};
use support::moto::filter;
use support::rig::{CLUSTER, Rig};
use tend::api::{Phase, Workspace};

const UID_TAG: &str = "tend.dev/workspace-uid";

fn calls(rig: &Rig, action: &str) -> Vec<Call> {
    rig.proxy
        .call_log()
        .into_iter()
        .filter(|c| c.action == action)
        .collect()
}

fn param<'a>(call: &'a Call, key: &str) -> Option<&'a str> {
    call.params.get(key).map(String::as_str)
}

fn uid(ws: &Workspace) -> String {
    ws.metadata.uid.clone().expect("uid")
}

fn status_of(ws: &Workspace) -> tend::api::WorkspaceStatus {
    ws.status.clone().expect("status")
}

fn ready_reason_is(ws: &Workspace, reason: &str) -> bool {
    ws.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False" && c.reason == reason)
    })
}

/// Every volume in moto tagged with this uid, root volumes included.
async fn volumes_tagged(rig: &Rig, uid: &str) -> Vec<Volume> {
    rig.moto.volumes_tagged(UID_TAG, uid).await
}

fn tag<'a>(tags: &'a [aws_sdk_ec2::types::Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

async fn attach(rig: &Rig, volume: &str, instance: &str) {
    rig.moto
        .ec2()
        .attach_volume()
        .volume_id(volume)
        .instance_id(instance)
        .device("/dev/sdg")
        .send()
        .await
        .expect("AttachVolume");
}

async fn detach(rig: &Rig, volume: &str, instance: &str) {
    rig.moto
        .ec2()
        .detach_volume()
        .volume_id(volume)
        .instance_id(instance)
        .send()
        .await
        .expect("DetachVolume");
}

async fn online(rig: &Rig, ws: &Workspace) -> Workspace {
    let name = ws.metadata.name.as_deref().expect("name");
    rig.create(ws).await;
    rig.wait_phase(name, Phase::Online).await
}

#[test]
fn the_iam_policy_allows_creating_nothing_untagged() {
    let policy = iam::Policy::load();
    for (action, resource) in [
        ("ec2:RunInstances", "instance"),
        ("ec2:RunInstances", "volume"),
        ("ec2:RunInstances", "network-interface"),
        ("ec2:CreateVolume", "volume"),
    ] {
        let statements = policy.conditions(action, resource);
        assert!(
            !statements.is_empty(),
            "{action} on {resource} is not allowed"
        );
        for required in statements {
            assert!(
                required.iter().any(|r| r.key == "tend.dev/cluster"),
                "{action} on {resource} is allowed without the tend.dev/cluster request tag"
            );
        }
        let tag_on_create = policy.conditions("ec2:CreateTags", resource);
        assert!(
            !tag_on_create.is_empty(),
            "tagging {resource} on creation is not allowed"
        );
    }
}

#[tokio::test]
async fn every_create_call_carries_the_tags_the_iam_policy_requires() {
    let rig = Rig::start().await;
    let first = online(&rig, &rig.ec2_workspace("dev")).await;
    let old = status_of(&first).instance_id.unwrap();
    rig.moto.terminate(&old).await;
    rig.wait_ws("dev", "online on a replacement", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&old)
        })
    })
    .await;

    let policy = iam::Policy::load();
    let mut checked = std::collections::BTreeSet::new();
    let creates = [
        (
            "RunInstances",
            &["instance", "volume", "network-interface"][..],
        ),
        ("CreateVolume", &["volume"][..]),
    ];
    for (action, creates) in creates {
        let seen = calls(&rig, action);
        assert!(!seen.is_empty(), "no {action} call");
        for call in seen {
            let tagged = iam::tag_specifications(&call.params);
            for resource in creates {
                for required in policy.conditions(&format!("ec2:{action}"), resource) {
                    for r in required {
                        let tags = tagged.get(*resource).unwrap_or_else(|| {
                            panic!("{action} does not tag its {resource}: {tagged:?}")
                        });
                        let value = tags.get(&r.key).unwrap_or_else(|| {
                            panic!("{action} tags its {resource} without {}: {tags:?}", r.key)
                        });
                        if let Some(wanted) = &r.value {
                            assert_eq!(value, wanted, "{action} {resource} tag {}", r.key);
                        }
                        checked.insert((action, *resource));
                    }
                }
            }
        }
    }
    assert_eq!(checked.len(), 4, "only these were checked: {checked:?}");

    // The data volume and the root volumes carry the same ownership tags;
    // only the marker tells them apart.
    let status = status_of(&rig.get("dev").unwrap());
    let data = status.volume_id.unwrap();
    for volume in volumes_tagged(&rig, &uid(&first)).await {
        let id = volume.volume_id().unwrap();
        let role = tag(volume.tags(), "tend.dev/volume");
        assert_eq!(role, Some(if id == data { "data" } else { "root" }), "{id}");
        assert_eq!(tag(volume.tags(), "tend.dev/cluster"), Some(CLUSTER));
    }
}

#[tokio::test]
async fn create_volume_and_run_instances_carry_distinct_idempotency_tokens() {
    let rig = Rig::start().await;
    let ws = online(&rig, &rig.ec2_workspace("dev")).await;
    let uid = uid(&ws);
    let volume_tokens: Vec<String> = calls(&rig, "CreateVolume")
        .iter()
        .map(|c| {
            param(c, "ClientToken")
                .expect("CreateVolume ClientToken")
                .to_owned()
        })
        .collect();
    let launch_tokens: Vec<String> = calls(&rig, "RunInstances")
        .iter()
        .map(|c| {
            param(c, "ClientToken")
                .expect("RunInstances ClientToken")
                .to_owned()
        })
        .collect();
    assert_eq!(volume_tokens.len(), 1);
    for token in volume_tokens.iter().chain(&launch_tokens) {
        assert!(token.len() <= 64 && token.is_ascii(), "{token}");
        assert!(token.contains(&uid), "{token} is not derived from the uid");
    }
    assert!(
        !launch_tokens.contains(&volume_tokens[0]),
        "{volume_tokens:?} {launch_tokens:?}"
    );
}

#[tokio::test]
async fn token_mismatch_on_run_instances_moves_to_a_new_launch_number() {
    let rig = Rig::start().await;
    // EC2's answer to a ClientToken reused with other parameters, e.g. a
    // spec edited between a lost answer and its retry.
    rig.proxy
        .inject(FaultRule::on("RunInstances").times(1).error_code(
        400,
        "IdempotentParameterMismatch",
        "The client token you have provided is associated with a resource that is already deleted.",
    ));
    let ws = online(&rig, &rig.ec2_workspace("dev")).await;
    let status = status_of(&ws);
    assert_eq!(status.launch_number, Some(2));
    let tokens: Vec<String> = calls(&rig, "RunInstances")
        .iter()
        .filter_map(|c| param(c, "ClientToken").map(str::to_owned))
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_ne!(tokens[0], tokens[1], "the spent token is not reused");
    let reasons = rig.event_reasons("dev");
    assert!(
        !reasons.iter().any(|r| r == "LaunchFailed" || r == "Failed"),
        "{reasons:?}"
    );
    assert_eq!(rig.instances_of(&ws).await.len(), 1);
}

#[tokio::test]
async fn token_mismatch_on_create_volume_moves_to_a_new_token() {
    let rig = Rig::start().await;
    rig.proxy
        .inject(FaultRule::on("CreateVolume").times(1).error_code(
            400,
            "IdempotentParameterMismatch",
            "token reused",
        ));
    let ws = online(&rig, &rig.ec2_workspace("dev")).await;
    let tokens: Vec<String> = calls(&rig, "CreateVolume")
        .iter()
        .map(|c| param(c, "ClientToken").expect("ClientToken").to_owned())
        .collect();
    assert_eq!(tokens.len(), 2, "{tokens:?}");
    assert_ne!(tokens[0], tokens[1]);
    let reasons = rig.event_reasons("dev");
    assert!(
        !reasons.iter().any(|r| r == "LaunchFailed" || r == "Failed"),
        "{reasons:?}"
    );
    let data: Vec<_> = volumes_tagged(&rig, &uid(&ws))
        .await
        .into_iter()
        .filter(|v| tag(v.tags(), "tend.dev/volume") != Some("root"))
        .collect();
    assert_eq!(data.len(), 1, "{data:?}");
    assert_eq!(data[0].volume_id(), status_of(&ws).volume_id.as_deref());
}

/// The ids of `vpc`'s subnets in `zone`, in the order EC2 lists them.
async fn listed_subnets(rig: &Rig, vpc: &str, zone: &str) -> Vec<String> {
    rig.moto
        .ec2()
        .describe_subnets()
        .filters(filter("vpc-id", vpc))
        .filters(filter("availability-zone", zone))
        .send()
        .await
        .expect("DescribeSubnets")
        .subnets()
        .iter()
        .filter_map(|s| s.subnet_id().map(str::to_owned))
        .collect()
}

/// A new VPC with one subnet in `other_zone` and several in `zone`, which EC2
/// does not list lowest id first, so that "the first one listed" and "the
/// lowest id" differ. moto lists in creation order and ids are random: while
/// the first listed is the lowest, it is replaced by a new one. Returns the
/// subnet in `other_zone` and the lowest id in `zone`.
async fn vpc_with_subnets_listed_out_of_order(
    rig: &Rig,
    zone: &str,
    other_zone: &str,
) -> (String, String) {
    let ec2 = rig.moto.ec2();
    let create = |zone: String, cidr: String, vpc: String| {
        let ec2 = ec2.clone();
        async move {
            ec2.create_subnet()
                .vpc_id(vpc)
                .availability_zone(zone)
                .cidr_block(cidr)
                .send()
                .await
                .expect("CreateSubnet")
                .subnet()
                .and_then(|s| s.subnet_id())
                .expect("subnet id")
                .to_owned()
        }
    };
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.20.0.0/16")
        .send()
        .await
        .expect("CreateVpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_owned();
    let elsewhere = create(other_zone.into(), "10.20.255.0/24".into(), vpc.clone()).await;
    create(zone.into(), "10.20.0.0/24".into(), vpc.clone()).await;
    for third in 1..64 {
        create(zone.into(), format!("10.20.{third}.0/24"), vpc.clone()).await;
        let listed = listed_subnets(rig, &vpc, zone).await;
        let lowest = listed.iter().min().expect("a subnet").clone();
        if listed[0] != lowest {
            return (elsewhere, lowest);
        }
        ec2.delete_subnet()
            .subnet_id(&listed[0])
            .send()
            .await
            .expect("DeleteSubnet");
    }
    panic!("moto kept listing the lowest subnet id first");
}

#[tokio::test]
async fn replacement_subnet_in_the_volume_zone_is_chosen_by_lowest_id() {
    let rig = Rig::start().await;
    let first = online(&rig, &rig.ec2_workspace("dev")).await;
    let old = status_of(&first).instance_id.unwrap();
    // The spec now names a subnet of another VPC, in another zone than the
    // data volume's; that VPC has several subnets in the volume's zone.
    let (elsewhere, lowest) =
        vpc_with_subnets_listed_out_of_order(&rig, &rig.zone, "us-east-1b").await;
    assert_ne!(rig.zone, "us-east-1b");
    rig.patch_spec("dev", json!({ "ec2": { "subnetId": elsewhere } }))
        .await;

    rig.moto.terminate(&old).await;
    rig.wait_ws("dev", "online on a replacement", |w| {
        w.status.as_ref().is_some_and(|s| {
            s.phase == Some(Phase::Online) && s.instance_id.as_deref() != Some(&old)
        })
    })
    .await;
    let launches = calls(&rig, "RunInstances");
    assert_eq!(launches.len(), 2);
    assert_eq!(param(&launches[1], "SubnetId"), Some(lowest.as_str()));
}
