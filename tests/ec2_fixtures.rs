//! Tests of the EC2 test fixtures: the moto server and the fault proxy.

#[path = "support/faults.rs"]
mod faults;
#[path = "support/moto.rs"]
mod moto;
#[path = "support/paths.rs"]
mod paths;

use std::time::{Duration, Instant};

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::operation::RequestId;
use aws_sdk_ec2::types::{
    HibernationOptionsRequest, InstanceStateName, InstanceType, ResourceType, Tag,
    TagSpecification, VolumeState,
};
use faults::{Fault, FaultProxy, FaultRule, Outcome};
use moto::{Moto, filter};

/// A client for `url` whose calls give up after `timeout`.
fn client_with_timeout(url: &str, timeout: Duration) -> aws_sdk_ec2::Client {
    use aws_sdk_ec2::config::timeout::TimeoutConfig;
    let config = Moto::ec2_config_for(url)
        .timeout_config(TimeoutConfig::builder().operation_timeout(timeout).build())
        .build();
    aws_sdk_ec2::Client::from_conf(config)
}

fn tag_spec(resource: ResourceType, key: &str, value: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(resource)
        .tags(Tag::builder().key(key).value(value).build())
        .build()
}

async fn state_of(moto: &Moto, id: &str) -> InstanceStateName {
    moto.instance(id)
        .await
        .unwrap_or_else(|| panic!("{id} not described"))
        .state()
        .and_then(|s| s.name())
        .cloned()
        .expect("instance has a state")
}

/// A short, human-readable name for the class of an SDK error.
fn class<E, R>(err: &SdkError<E, R>) -> &'static str {
    match err {
        SdkError::ConstructionFailure(_) => "construction",
        SdkError::TimeoutError(_) => "timeout",
        SdkError::DispatchFailure(_) => "dispatch",
        SdkError::ResponseError(_) => "response",
        SdkError::ServiceError(_) => "service",
        _ => "other",
    }
}

#[tokio::test]
async fn moto_starts_and_answers_describe_instances() {
    let moto = Moto::start().await;
    assert!(moto.url().starts_with("http://127.0.0.1:"));
    let output = moto
        .ec2()
        .describe_instances()
        .send()
        .await
        .expect("DescribeInstances against moto");
    assert!(output.reservations().is_empty());

    let (subnet, az) = moto.default_subnet(None).await;
    assert!(subnet.starts_with("subnet-"), "{subnet}");
    assert_eq!(az, "us-east-1a");
    let (_, az_c) = moto.default_subnet(Some("us-east-1c")).await;
    assert_eq!(az_c, "us-east-1c");
    let ami = moto.some_ami().await;
    assert!(ami.starts_with("ami-"), "{ami}");
}

#[tokio::test]
async fn moto_reset_forgets_instances() {
    let moto = Moto::start().await;
    let (subnet_before, _) = moto.default_subnet(None).await;
    let id = moto.run_tagged("tend.test/owner", "reset").await;
    assert!(moto.instance(&id).await.is_some());
    moto.reset().await;
    assert!(moto.instance(&id).await.is_none());
    assert!(
        moto.instances_tagged("tend.test/owner", "reset")
            .await
            .is_empty()
    );
    // The preloaded AMIs and the default VPC come back.
    assert!(moto.some_ami().await.starts_with("ami-"));
    let (subnet_after, az) = moto.default_subnet(None).await;
    assert!(subnet_after.starts_with("subnet-"), "{subnet_after}");
    assert_eq!(az, "us-east-1a");
    assert_ne!(subnet_before, subnet_after, "subnet ids change on reset");
}

/// The behaviours written down at the top of `support/moto.rs`.
#[tokio::test]
async fn moto_instance_behaviour_matches_the_notes() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2();
    let ami = moto.some_ami().await;
    let (subnet, az) = moto.default_subnet(Some("us-east-1b")).await;
    assert_eq!(az, "us-east-1b");

    // RunInstances answers pending, with the tags; the next describe says running.
    let run = ec2
        .run_instances()
        .image_id(&ami)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(&subnet)
        .min_count(1)
        .max_count(1)
        .hibernation_options(
            HibernationOptionsRequest::builder()
                .configured(true)
                .build(),
        )
        .tag_specifications(tag_spec(ResourceType::Instance, "tend.test/owner", "facts"))
        .tag_specifications(tag_spec(
            ResourceType::Volume,
            "tend.test/owner",
            "facts-root",
        ))
        .send()
        .await
        .expect("RunInstances");
    let launched = &run.instances()[0];
    let id = launched.instance_id().unwrap().to_string();
    assert_eq!(
        launched.state().and_then(|s| s.name()),
        Some(&InstanceStateName::Pending)
    );
    assert_eq!(launched.tags().len(), 1);
    assert_eq!(
        launched.placement().and_then(|p| p.availability_zone()),
        Some("us-east-1b")
    );
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Running);
    let described = moto.instance(&id).await.unwrap();
    assert_eq!(
        described.hibernation_options().and_then(|h| h.configured()),
        Some(true)
    );

    // The root volume exists, is in use, carries the volume tags, and is deleted on termination.
    let root = described.block_device_mappings()[0].clone();
    assert_eq!(root.device_name(), Some("/dev/sda1"));
    let root_ebs = root.ebs().unwrap();
    assert_eq!(root_ebs.delete_on_termination(), Some(true));
    let root_id = root_ebs.volume_id().unwrap().to_string();
    let root_volume = moto.volume(&root_id).await.expect("root volume described");
    assert_eq!(root_volume.state(), Some(&VolumeState::InUse));
    assert_eq!(root_volume.size(), Some(8));
    assert_eq!(root_volume.tags()[0].value(), Some("facts-root"));

    // Hibernating stop is accepted and instant.
    let stop = ec2
        .stop_instances()
        .instance_ids(&id)
        .hibernate(true)
        .send()
        .await
        .expect("StopInstances Hibernate=true");
    assert_eq!(
        stop.stopping_instances()[0]
            .current_state()
            .and_then(|s| s.name()),
        Some(&InstanceStateName::Stopping)
    );
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Stopped);
    let reason = moto.instance(&id).await.unwrap().state_reason().cloned();
    assert_eq!(
        reason.and_then(|r| r.code().map(str::to_string)).as_deref(),
        Some("Client.UserInitiatedShutdown")
    );
    moto.start_instance(&id).await;
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Running);

    // Hibernate is also accepted for an instance not configured for it.
    let plain = moto.run_tagged("tend.test/owner", "facts-plain").await;
    ec2.stop_instances()
        .instance_ids(&plain)
        .hibernate(true)
        .send()
        .await
        .expect("StopInstances Hibernate=true without hibernation configured");
    assert_eq!(state_of(&moto, &plain).await, InstanceStateName::Stopped);

    // A data volume: available, then in use, then available again after termination.
    let created = ec2
        .create_volume()
        .availability_zone(&az)
        .size(10)
        .tag_specifications(tag_spec(
            ResourceType::Volume,
            "tend.test/owner",
            "facts-data",
        ))
        .send()
        .await
        .expect("CreateVolume");
    assert_eq!(created.state(), Some(&VolumeState::Available));
    assert_eq!(created.tags()[0].value(), Some("facts-data"));
    let volume_id = created.volume_id().unwrap().to_string();
    ec2.attach_volume()
        .volume_id(&volume_id)
        .instance_id(&id)
        .device("/dev/sdf")
        .send()
        .await
        .expect("AttachVolume");
    let volume = moto.volume(&volume_id).await.unwrap();
    assert_eq!(volume.state(), Some(&VolumeState::InUse));
    assert_eq!(volume.attachments()[0].instance_id(), Some(id.as_str()));
    let mapping = moto
        .instance(&id)
        .await
        .unwrap()
        .block_device_mappings()
        .iter()
        .find(|m| m.device_name() == Some("/dev/sdf"))
        .cloned()
        .expect("attached volume in the block device mappings");
    assert_eq!(mapping.ebs().unwrap().delete_on_termination(), Some(false));
    let in_use = ec2
        .delete_volume()
        .volume_id(&volume_id)
        .send()
        .await
        .expect_err("deleting an attached volume");
    assert_eq!(in_use.code(), Some("VolumeInUse"));

    // Termination is instant, the instance stays described, the data volume comes free
    // and the root volume is gone.
    let terminate = ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect("TerminateInstances");
    assert_eq!(
        terminate.terminating_instances()[0]
            .current_state()
            .and_then(|s| s.name()),
        Some(&InstanceStateName::ShuttingDown)
    );
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Terminated);
    let tagged = moto.instances_tagged("tend.test/owner", "facts").await;
    assert_eq!(tagged.len(), 1);
    assert_eq!(
        tagged[0].state().and_then(|s| s.name()),
        Some(&InstanceStateName::Terminated)
    );
    let volume = moto.volume(&volume_id).await.unwrap();
    assert_eq!(volume.state(), Some(&VolumeState::Available));
    assert!(volume.attachments().is_empty());
    assert!(moto.volume(&root_id).await.is_none());

    // No state-machine checks: a terminated instance can be stopped and started again.
    moto.terminate(&id).await;
    moto.stop(&id).await;
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Stopped);
    moto.start_instance(&id).await;
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Running);
}

#[tokio::test]
async fn moto_unknown_ids_and_bad_amis() {
    let moto = Moto::start().await;
    let ec2 = moto.ec2();
    let unknown = "i-0123456789abcdef0";
    let known = moto.run_tagged("tend.test/owner", "unknown-ids").await;

    let by_filter = ec2
        .describe_instances()
        .filters(filter("instance-id", unknown))
        .send()
        .await
        .expect("an unknown id in a filter is not an error");
    assert!(by_filter.reservations().is_empty());

    for ids in [vec![unknown], vec![known.as_str(), unknown]] {
        let err = ec2
            .describe_instances()
            .set_instance_ids(Some(ids.iter().map(|s| s.to_string()).collect()))
            .send()
            .await
            .expect_err("an unknown id in InstanceIds");
        assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"), "{ids:?}");
    }
    let err = ec2
        .terminate_instances()
        .instance_ids(unknown)
        .send()
        .await
        .expect_err("terminating an unknown id");
    assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"));
    let err = ec2
        .stop_instances()
        .instance_ids(unknown)
        .send()
        .await
        .expect_err("stopping an unknown id");
    assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"));
    assert!(moto.volume("vol-0123456789abcdef0").await.is_none());
    let err = ec2
        .describe_volumes()
        .volume_ids("vol-0123456789abcdef0")
        .send()
        .await
        .expect_err("an unknown id in VolumeIds");
    assert_eq!(err.code(), Some("InvalidVolume.NotFound"));

    for (ami, code) in [
        ("ami-00000000", "InvalidAMIID.NotFound"),
        ("ami-0123456789abcdef0", "InvalidAMIID.NotFound"),
        ("bogus", "InvalidAMIID.Malformed"),
    ] {
        let err = ec2
            .run_instances()
            .image_id(ami)
            .min_count(1)
            .max_count(1)
            .send()
            .await
            .expect_err("RunInstances with a bad AMI");
        assert_eq!(err.code(), Some(code), "{ami}");
        let raw = err.raw_response().map(|r| r.status().as_u16());
        assert_eq!(raw, Some(400), "{ami}");
    }

    // The client token is not honoured: the same token launches twice.
    let mut launched = Vec::new();
    for _ in 0..2 {
        let run = ec2
            .run_instances()
            .image_id(moto.some_ami().await)
            .min_count(1)
            .max_count(1)
            .client_token("same-token")
            .send()
            .await
            .expect("RunInstances with a client token");
        launched.push(run.instances()[0].instance_id().unwrap().to_string());
    }
    assert_ne!(launched[0], launched[1]);
}

#[tokio::test]
async fn moto_subnets_carry_their_zone() {
    let moto = Moto::start().await;
    let subnets = moto
        .ec2()
        .describe_subnets()
        .send()
        .await
        .expect("DescribeSubnets");
    let mut zones: Vec<&str> = subnets
        .subnets()
        .iter()
        .filter(|s| s.default_for_az() == Some(true))
        .filter_map(|s| s.availability_zone())
        .collect();
    zones.sort_unstable();
    assert_eq!(
        zones,
        [
            "us-east-1a",
            "us-east-1b",
            "us-east-1c",
            "us-east-1d",
            "us-east-1e",
            "us-east-1f"
        ]
    );
}

#[tokio::test]
async fn proxy_passes_run_and_describe_through() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    let (subnet, _) = moto.default_subnet(None).await;
    let run = ec2
        .run_instances()
        .image_id(moto.some_ami().await)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(subnet)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tag_spec(
            ResourceType::Instance,
            "tend.test/workspace",
            "team a/ws+1",
        ))
        .send()
        .await
        .expect("RunInstances through the proxy");
    let id = run.instances()[0].instance_id().unwrap().to_string();
    let described = ec2
        .describe_instances()
        .filters(filter("instance-id", &id))
        .send()
        .await
        .expect("DescribeInstances through the proxy");
    let instance = &described.reservations()[0].instances()[0];
    assert_eq!(instance.instance_id(), Some(id.as_str()));
    // The tag value survived encoding, forwarding and decoding.
    assert_eq!(instance.tags()[0].value(), Some("team a/ws+1"));

    assert_eq!(proxy.calls("RunInstances"), 1);
    assert_eq!(proxy.calls("DescribeInstances"), 1);
    let log = proxy.call_log();
    assert_eq!(log.len(), 2);
    assert_eq!(log[0].action, "RunInstances");
    assert!(log[0].instance_ids.is_empty());
    assert_eq!(log[0].outcome, Outcome::Upstream { status: 200 });
    assert_eq!(log[1].action, "DescribeInstances");
    assert_eq!(log[1].instance_ids, vec![id.clone()]);
    assert_eq!(
        log[1].params.get("Filter.1.Name").map(String::as_str),
        Some("instance-id")
    );
    assert_eq!(
        log[1].params.get("Filter.1.Value.1"),
        Some(&id),
        "{:?}",
        log[1].params
    );
    assert_eq!(
        log[0]
            .params
            .get("TagSpecification.1.Tag.1.Value")
            .map(String::as_str),
        Some("team a/ws+1"),
        "{:?}",
        log[0].params
    );
    assert_eq!(log[1].fault, None);

    // Upstream errors pass through unchanged.
    let err = ec2
        .describe_instances()
        .instance_ids("i-0123456789abcdef0")
        .send()
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Some("InvalidInstanceID.NotFound"));
    assert_eq!(
        proxy.call_log()[2].outcome,
        Outcome::Upstream { status: 400 }
    );
}

#[tokio::test]
async fn injected_errors_are_service_errors_with_their_codes() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());

    let cases: [(Fault, u16, &str, Option<&str>); 4] = [
        (
            Fault::Throttle,
            503,
            "RequestLimitExceeded",
            Some("Request limit exceeded."),
        ),
        (Fault::ServerError(500), 500, "InternalError", None),
        (Fault::ServerError(503), 503, "Unavailable", None),
        (
            Fault::ErrorCode {
                status: 400,
                code: "UnauthorizedOperation".to_string(),
                message: "You are not authorized to perform this operation. <&>".to_string(),
            },
            400,
            "UnauthorizedOperation",
            Some("You are not authorized to perform this operation. <&>"),
        ),
    ];
    for (fault, status, code, message) in cases {
        proxy.clear();
        let rule = proxy.inject(FaultRule::on("DescribeInstances").fault(fault.clone()));
        let err = ec2
            .describe_instances()
            .send()
            .await
            .expect_err("an injected error");
        assert_eq!(
            class(&err),
            "service",
            "{fault:?}: {}",
            DisplayErrorContext(&err)
        );
        assert_eq!(err.code(), Some(code), "{fault:?}");
        if let Some(message) = message {
            assert_eq!(err.message(), Some(message), "{fault:?}");
        }
        assert_eq!(
            err.raw_response().map(|r| r.status().as_u16()),
            Some(status),
            "{fault:?}"
        );
        assert!(err.meta().request_id().is_some(), "{fault:?}");
        assert_eq!(rule.hits(), 1);
        let last = proxy.call_log().pop().unwrap();
        assert_eq!(last.fault, Some(fault));
        assert_eq!(last.outcome, Outcome::Injected { status });
    }
    // Other actions are untouched.
    ec2.describe_subnets()
        .send()
        .await
        .expect("DescribeSubnets is not faulted");
}

#[tokio::test]
async fn reset_is_a_dispatch_failure() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    proxy.inject(FaultRule::on("DescribeInstances").times(1).reset());
    let err = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("reset connection");
    assert_eq!(class(&err), "dispatch", "{}", DisplayErrorContext(&err));
    assert_eq!(
        proxy.call_log()[0].outcome,
        Outcome::Dropped {
            upstream_status: None
        }
    );
    // The client recovers on the next call.
    ec2.describe_instances()
        .send()
        .await
        .expect("after the reset");
}

#[tokio::test]
async fn hang_is_a_timeout() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = client_with_timeout(proxy.url(), Duration::from_millis(500));
    proxy.inject(FaultRule::on("DescribeInstances").times(1).hang());
    let started = Instant::now();
    let err = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("hanging call");
    assert_eq!(class(&err), "timeout", "{}", DisplayErrorContext(&err));
    assert!(started.elapsed() >= Duration::from_millis(500));
    let call = &proxy.call_log()[0];
    assert_eq!(call.fault, Some(Fault::Hang));
    assert_eq!(call.outcome, Outcome::Pending);
    ec2.describe_instances()
        .send()
        .await
        .expect("after the hang");
}

#[tokio::test]
async fn malformed_is_an_unparsable_response() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    proxy.inject(FaultRule::on("DescribeInstances").malformed());
    let err = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("malformed answer");
    // The SDK reports a body it cannot parse as an unhandled service error
    // without a code, carrying the raw HTTP 200 response.
    assert_eq!(class(&err), "service", "{}", DisplayErrorContext(&err));
    assert_eq!(err.code(), None);
    assert_eq!(err.raw_response().map(|r| r.status().as_u16()), Some(200));
    let service = err.into_service_error();
    assert!(service.meta().code().is_none());
    let text = format!("{}", DisplayErrorContext(&service));
    assert!(text.contains("unhandled"), "{text}");
}

#[tokio::test]
async fn truncated_is_a_response_error() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    proxy.inject(FaultRule::on("DescribeInstances").times(1).truncated());
    let err = ec2
        .describe_instances()
        .send()
        .await
        .expect_err("truncated answer");
    assert_eq!(class(&err), "response", "{}", DisplayErrorContext(&err));
    ec2.describe_instances()
        .send()
        .await
        .expect("after the truncated answer");
}

#[tokio::test]
async fn delay_slows_the_call_then_forwards_it() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let patient = client_with_timeout(proxy.url(), Duration::from_secs(10));
    proxy.inject(
        FaultRule::on("DescribeInstances")
            .times(1)
            .delay(Duration::from_millis(300)),
    );
    let started = Instant::now();
    patient
        .describe_instances()
        .send()
        .await
        .expect("delayed call succeeds");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(
        proxy.call_log()[0].outcome,
        Outcome::Upstream { status: 200 }
    );

    // A client that gives up first sees a timeout, but the request still
    // reaches moto once the delay is over.
    let impatient = client_with_timeout(proxy.url(), Duration::from_millis(300));
    proxy.inject(
        FaultRule::on("RunInstances")
            .times(1)
            .delay(Duration::from_secs(1)),
    );
    let err = impatient
        .run_instances()
        .image_id(moto.some_ami().await)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tag_spec(ResourceType::Instance, "tend.test/owner", "late"))
        .send()
        .await
        .expect_err("a delay beyond the timeout");
    assert_eq!(class(&err), "timeout", "{}", DisplayErrorContext(&err));
    assert!(
        moto.instances_tagged("tend.test/owner", "late")
            .await
            .is_empty()
    );
    let log = proxy
        .wait_for("the delayed RunInstances to be forwarded", |log| {
            log.iter()
                .any(|c| c.action == "RunInstances" && c.outcome != Outcome::Pending)
        })
        .await;
    assert_eq!(log[1].outcome, Outcome::Upstream { status: 200 });
    assert_eq!(
        moto.instances_tagged("tend.test/owner", "late").await.len(),
        1
    );
}

#[tokio::test]
async fn times_stops_after_n_matches() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    let rule = proxy.inject(FaultRule::on("DescribeInstances").times(2).throttle());
    for attempt in 0..2 {
        let err = ec2
            .describe_instances()
            .send()
            .await
            .expect_err("throttled");
        assert_eq!(
            err.code(),
            Some("RequestLimitExceeded"),
            "attempt {attempt}"
        );
    }
    assert!(rule.is_used_up());
    for _ in 0..3 {
        ec2.describe_instances()
            .send()
            .await
            .expect("the rule is used up");
    }
    assert_eq!(rule.hits(), 2);
    assert_eq!(proxy.calls("DescribeInstances"), 5);

    // A rule without a count applies until it is removed or cleared.
    let forever = proxy.inject(FaultRule::any().server_error(500));
    for _ in 0..3 {
        ec2.describe_subnets().send().await.expect_err("faulted");
    }
    forever.remove();
    ec2.describe_subnets().send().await.expect("removed");
    proxy.inject(FaultRule::any().throttle());
    ec2.describe_subnets().send().await.expect_err("faulted");
    proxy.clear();
    ec2.describe_subnets().send().await.expect("cleared");
    assert_eq!(forever.hits(), 3);

    proxy.clear_log();
    assert_eq!(proxy.calls("DescribeSubnets"), 0);
    assert!(proxy.call_log().is_empty());
}

#[tokio::test]
async fn mentioning_only_affects_requests_naming_that_id() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    let a = moto.run_tagged("tend.test/owner", "a").await;
    let b = moto.run_tagged("tend.test/owner", "b").await;
    let rule = proxy.inject(FaultRule::any().mentioning(&a).throttle());

    for id in [&a, &b] {
        let by_id = ec2.describe_instances().instance_ids(id).send().await;
        let by_filter = ec2
            .describe_instances()
            .filters(filter("instance-id", id))
            .send()
            .await;
        let stop = ec2.stop_instances().instance_ids(id).send().await;
        if *id == a {
            for result in [by_id.map(|_| ()), by_filter.map(|_| ())] {
                assert_eq!(result.unwrap_err().code(), Some("RequestLimitExceeded"));
            }
            assert_eq!(stop.unwrap_err().code(), Some("RequestLimitExceeded"));
        } else {
            by_id.expect("b by id");
            by_filter.expect("b by filter");
            stop.expect("stop b");
        }
    }
    assert_eq!(rule.hits(), 3);
    // The faulted stop never reached moto; the other one did.
    assert_eq!(state_of(&moto, &a).await, InstanceStateName::Running);
    assert_eq!(state_of(&moto, &b).await, InstanceStateName::Stopped);

    // Naming both ids in one request matches too.
    let err = ec2
        .describe_instances()
        .instance_ids(&b)
        .instance_ids(&a)
        .send()
        .await
        .expect_err("mentions a");
    assert_eq!(err.code(), Some("RequestLimitExceeded"));
    let last = proxy.call_log().pop().unwrap();
    assert_eq!(last.instance_ids, vec![b.clone(), a.clone()]);

    // A prefix of an id is not a mention of it.
    proxy.clear();
    let prefix = &a[..a.len() - 1];
    proxy.inject(FaultRule::any().mentioning(prefix).throttle());
    ec2.describe_instances()
        .instance_ids(&a)
        .send()
        .await
        .expect("a prefix does not match");

    // Whole decoded values match, spaces and slashes included.
    proxy.clear();
    proxy.inject(
        FaultRule::on("CreateTags")
            .mentioning("team a/ws 1")
            .error_code(400, "InvalidParameterValue", "no"),
    );
    let err = ec2
        .create_tags()
        .resources(&b)
        .tags(Tag::builder().key("k").value("team a/ws 1").build())
        .send()
        .await
        .expect_err("decoded tag value matched");
    assert_eq!(err.code(), Some("InvalidParameterValue"));
    ec2.create_tags()
        .resources(&b)
        .tags(Tag::builder().key("k").value("team a/ws 2").build())
        .send()
        .await
        .expect("other value");
}

#[tokio::test]
async fn forward_then_reset_fails_the_call_but_the_effect_happens() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = Moto::ec2_client_for(proxy.url());
    let (subnet, _) = moto.default_subnet(None).await;
    proxy.inject(FaultRule::on("RunInstances").times(1).forward_then_reset());
    let err = ec2
        .run_instances()
        .image_id(moto.some_ami().await)
        .instance_type(InstanceType::T3Micro)
        .subnet_id(subnet)
        .min_count(1)
        .max_count(1)
        .tag_specifications(tag_spec(
            ResourceType::Instance,
            "tend.test/workspace",
            "lost-answer",
        ))
        .send()
        .await
        .expect_err("the answer is lost");
    assert_eq!(class(&err), "dispatch", "{}", DisplayErrorContext(&err));
    let instances = moto
        .instances_tagged("tend.test/workspace", "lost-answer")
        .await;
    assert_eq!(instances.len(), 1, "the instance was launched anyway");
    assert_eq!(
        instances[0].state().and_then(|s| s.name()),
        Some(&InstanceStateName::Running)
    );
    let call = &proxy.call_log()[0];
    assert_eq!(call.fault, Some(Fault::ForwardThenReset));
    assert_eq!(
        call.outcome,
        Outcome::Dropped {
            upstream_status: Some(200)
        }
    );

    // Same for a terminate whose answer is lost.
    let id = instances[0].instance_id().unwrap().to_string();
    proxy.inject(
        FaultRule::on("TerminateInstances")
            .mentioning(&id)
            .forward_then_reset(),
    );
    let err = ec2
        .terminate_instances()
        .instance_ids(&id)
        .send()
        .await
        .expect_err("the answer is lost");
    assert_eq!(class(&err), "dispatch", "{}", DisplayErrorContext(&err));
    assert_eq!(state_of(&moto, &id).await, InstanceStateName::Terminated);
}

#[tokio::test]
async fn wait_for_calls_sees_a_hanging_request() {
    let moto = Moto::start().await;
    let proxy = FaultProxy::start(moto.url()).await;
    let ec2 = client_with_timeout(proxy.url(), Duration::from_secs(30));
    proxy.inject(FaultRule::on("StopInstances").hang());
    let pending = tokio::spawn(async move {
        ec2.stop_instances()
            .instance_ids("i-0123456789abcdef0")
            .send()
            .await
    });
    proxy.wait_for_calls("StopInstances", 1).await;
    let call = &proxy.call_log()[0];
    assert_eq!(call.instance_ids, vec!["i-0123456789abcdef0".to_string()]);
    assert_eq!(call.outcome, Outcome::Pending);
    // Dropping the proxy closes the held connection.
    drop(proxy);
    let result = pending.await.expect("join");
    let err = result.expect_err("the connection was closed");
    assert_eq!(class(&err), "dispatch", "{}", DisplayErrorContext(&err));
}
