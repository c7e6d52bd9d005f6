//! A `moto_server` fixture: a local, in-memory fake of the EC2 API.
//!
//! [`Moto::start`] launches `moto_server` (PyPI `moto[ec2,server]`, installed
//! into the repository's `.venv` by `make test`) on a free 127.0.0.1 port and
//! kills it when the [`Moto`] value is dropped. `$TEND_MOTO_SERVER` overrides
//! the path of the executable.
//!
//! # Observed behaviour of moto 5.2.5 (us-east-1, `MOTO_ENABLE_AMI_VALIDATION=true`)
//!
//! These were checked by experiment; tests may rely on them, and the operator
//! must not assume real EC2 behaves the same way where noted.
//!
//! * **State changes are instant.** `RunInstances` answers `pending`, the very
//!   next `DescribeInstances` says `running`. `StopInstances` answers
//!   `stopping`, the next describe says `stopped`. `StartInstances` answers
//!   `pending`, then `running`. `TerminateInstances` answers `shutting-down`,
//!   then `terminated`. Slow transitions have to be made with the fault proxy.
//! * **Hibernate is accepted but not modelled.** `StopInstances` with
//!   `Hibernate=true` succeeds and the instance becomes `stopped`, even for an
//!   instance launched without `HibernationOptions.Configured=true` (real EC2
//!   rejects that). The `StateReason` is the same as for a plain stop
//!   (`Client.UserInitiatedShutdown`). `HibernationOptions.Configured=true` on
//!   `RunInstances` is echoed back by `DescribeInstances`.
//! * **Terminated instances stay visible.** They are still described (state
//!   `terminated`), by id, by `instance-id` filter and by `tag:` filters, for
//!   as long as the server runs (until `reset`).
//! * **No state-machine checks.** `StopInstances` on a `stopped` or even a
//!   `terminated` instance succeeds, and `StartInstances` then brings a
//!   terminated instance back to `running`. `TerminateInstances` twice
//!   succeeds both times.
//! * **Unknown ids.** A `Filter` `instance-id=<unknown id>` gives an empty
//!   result (no error). Naming an unknown id in `InstanceIds` fails the whole
//!   call with `InvalidInstanceID.NotFound` (HTTP 400), also when other ids in
//!   the list exist; a syntactically bad id such as `bogus` also gives
//!   `InvalidInstanceID.NotFound` (not `.Malformed`). `StopInstances` and
//!   `TerminateInstances` with an unknown id fail with
//!   `InvalidInstanceID.NotFound`. `DescribeVolumes` with an unknown id in
//!   `VolumeIds` fails with `InvalidVolume.NotFound`; with a `volume-id` filter
//!   it gives an empty result.
//! * **Volumes.** `CreateVolume` answers `available` and applies its
//!   `TagSpecifications`. `AttachVolume` answers `attaching`; the next
//!   `DescribeVolumes` says `in-use` with an `attached` attachment, and the
//!   instance's `BlockDeviceMappings` lists it with `DeleteOnTermination=false`.
//!   `DetachVolume` needs `InstanceId` (without it moto answers a 500 HTML
//!   page); afterwards the volume is `available`. `DeleteVolume` on an attached
//!   volume fails with `VolumeInUse`. moto does not check that the volume and
//!   the instance are in the same availability zone, nor that the volume is
//!   already attached (a second `AttachVolume` silently moves it).
//! * **Termination and volumes.** After `TerminateInstances` an attached data
//!   volume (`DeleteOnTermination=false`) is `available` again with no
//!   attachments. The root volume (`/dev/sda1`, 8 GiB unless a block device
//!   mapping says otherwise, `DeleteOnTermination=true` by default) is deleted;
//!   with `DeleteOnTermination=false` in the launch mapping it stays, as
//!   `available`.
//! * **AMIs.** ~1300 AMIs are preloaded in us-east-1 (e.g. `ami-03cf127a`, a
//!   Windows image). `RunInstances` with a well-formed but unknown id
//!   (`ami-00000000`, `ami-zz`) fails with `InvalidAMIID.NotFound` (400); an id
//!   without the `ami-` prefix (`bogus`) fails with `InvalidAMIID.Malformed`.
//! * **Tags.** `TagSpecifications` on `RunInstances` work for `instance` (the
//!   answer already carries the tags) and for `volume` (applied to the root
//!   volume); `tag:KEY` filters work on `DescribeInstances`.
//! * **Subnets.** The default VPC has one default subnet per AZ,
//!   `us-east-1a` … `us-east-1f`; `DescribeSubnets` returns `AvailabilityZone`
//!   and `DefaultForAz=true`, and the `default-for-az` and `availability-zone`
//!   filters work. Subnet ids are random and change after `reset`.
//! * **Not modelled / gaps.** `ClientToken` on `RunInstances` is ignored: two
//!   calls with the same token launch two instances. The `client-token` filter
//!   on `DescribeInstances` is not implemented and answers HTTP 500 with an
//!   HTML body. `DryRun=true` answers `DryRunOperation` (HTTP 412).
//! * **Reset.** `POST /moto-api/reset` answers `{"status": "ok"}` and clears all
//!   instances and volumes; the AMIs and the default VPC come back on the next
//!   call, with new subnet ids.
//! * moto answers every request with `Connection: close`.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use aws_sdk_ec2::error::DisplayErrorContext;
use aws_sdk_ec2::types::{Filter, Instance, Volume};
use tokio::process::{Child, Command};

/// How long `moto_server` gets to start answering.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How often readiness is polled while starting.
const START_POLL: Duration = Duration::from_millis(50);
/// How many times a start is retried when the chosen port was taken meanwhile.
const START_ATTEMPTS: usize = 3;

/// A running `moto_server`, killed on drop.
pub struct Moto {
    url: String,
    port: u16,
    ec2: aws_sdk_ec2::Client,
    _child: Child,
    _log: tempfile::NamedTempFile,
}

enum StartError {
    /// The port was taken by someone else before moto could bind it.
    PortTaken,
}

impl Moto {
    /// Path of the `moto_server` executable.
    pub fn server_path() -> PathBuf {
        match std::env::var_os("TEND_MOTO_SERVER") {
            Some(path) if !path.is_empty() => PathBuf::from(path),
            _ => super::paths::project_path(".venv/bin/moto_server"),
        }
    }

    /// Starts `moto_server` on a free 127.0.0.1 port, waits until it listens
    /// (at most 20 s) and answers a first `DescribeInstances`.
    pub async fn start() -> Moto {
        let bin = Self::server_path();
        if !bin.is_file() {
            panic!(
                "moto_server not found at {}: run `make test` (it installs moto[ec2,server] \
                 into .venv), or point $TEND_MOTO_SERVER at a moto_server executable",
                bin.display()
            );
        }
        for _ in 0..START_ATTEMPTS {
            match Self::try_start(&bin).await {
                Ok(moto) => return moto,
                Err(StartError::PortTaken) => continue,
            }
        }
        panic!("moto_server: the chosen port was taken {START_ATTEMPTS} times in a row");
    }

    async fn try_start(bin: &Path) -> Result<Moto, StartError> {
        let port = free_port();
        let log = tempfile::Builder::new()
            .prefix("tend-moto-")
            .suffix(".log")
            .tempfile()
            .expect("create moto_server log file");
        let stdout = log.as_file().try_clone().expect("clone log file handle");
        let stderr = log.as_file().try_clone().expect("clone log file handle");
        let mut child = Command::new(bin)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .env("MOTO_ENABLE_AMI_VALIDATION", "true")
            .env("PYTHONUNBUFFERED", "1")
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONWARNINGS", "ignore")
            .stdin(Stdio::null())
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", bin.display()));

        // Ready once this child says it listens on the port. Connecting alone
        // is not proof: another server may have taken the port meanwhile, and
        // a connect to a free port can even succeed by connecting to itself.
        let banner = format!("Running on http://127.0.0.1:{port}");
        let deadline = tokio::time::Instant::now() + START_TIMEOUT;
        loop {
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            if let Some(status) = child.try_wait().expect("poll moto_server") {
                if output.contains("Address already in use") {
                    return Err(StartError::PortTaken);
                }
                panic!("moto_server exited during start-up ({status}); its output:\n{output}");
            }
            if output.contains(&banner) {
                break;
            }
            if tokio::time::Instant::now() >= deadline {
                panic!(
                    "moto_server did not start listening on 127.0.0.1:{port} within \
                     {START_TIMEOUT:?}; its output:\n{output}"
                );
            }
            tokio::time::sleep(START_POLL).await;
        }

        let url = format!("http://127.0.0.1:{port}");
        let ec2 = Self::ec2_client_for(&url);
        // The first EC2 call loads moto's EC2 backend, which takes about a
        // second; do it here so that tests using short client timeouts do not
        // pay for it.
        if let Err(e) = ec2.describe_instances().send().await {
            let output = std::fs::read_to_string(log.path()).unwrap_or_default();
            panic!(
                "moto_server on {url} failed its first DescribeInstances: {}; its output:\n{output}",
                DisplayErrorContext(&e)
            );
        }
        Ok(Moto {
            ec2,
            url,
            port,
            _child: child,
            _log: log,
        })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Forgets every resource (`POST /moto-api/reset`).
    pub async fn reset(&self) {
        use http_body_util::{BodyExt, Full};
        use hyper_util::client::legacy::Client;
        use hyper_util::rt::TokioExecutor;

        let client: Client<_, Full<bytes::Bytes>> =
            Client::builder(TokioExecutor::new()).build_http();
        let request = hyper::Request::post(format!("{}/moto-api/reset", self.url))
            .body(Full::default())
            .expect("build reset request");
        let response = client
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("POST {}/moto-api/reset: {e}", self.url));
        let status = response.status();
        let body = response
            .into_body()
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        assert!(
            status.is_success(),
            "moto reset answered {status}: {}",
            String::from_utf8_lossy(&body)
        );
    }

    /// SDK configuration for an EC2 endpoint at `url` (moto, or a proxy in
    /// front of it): region us-east-1, static credentials `test`/`test`, and
    /// a single attempt per call so tests see raw behaviour. Tests may add
    /// e.g. a timeout configuration before building.
    pub fn ec2_config_for(url: &str) -> aws_sdk_ec2::config::Builder {
        use aws_sdk_ec2::config::retry::RetryConfig;
        use aws_sdk_ec2::config::{BehaviorVersion, Credentials, Region};

        aws_sdk_ec2::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto-fixture"))
            .endpoint_url(url)
            .retry_config(RetryConfig::standard().with_max_attempts(1))
    }

    /// An EC2 client for the endpoint at `url`; see [`Moto::ec2_config_for`].
    pub fn ec2_client_for(url: &str) -> aws_sdk_ec2::Client {
        aws_sdk_ec2::Client::from_conf(Self::ec2_config_for(url).build())
    }

    /// An SQS client configuration for this moto (its queues stand in for
    /// the one EventBridge fills), with the fixture's region and credentials.
    pub fn sqs_config(&self) -> aws_sdk_sqs::Config {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(Region::new("us-east-1"))
            .credentials_provider(Credentials::new("test", "test", None, None, "moto-fixture"))
            .endpoint_url(self.url())
            .build()
    }

    pub fn sqs(&self) -> aws_sdk_sqs::Client {
        aws_sdk_sqs::Client::from_conf(self.sqs_config())
    }

    /// Creates a queue; its URL.
    pub async fn queue(&self, name: &str) -> String {
        self.sqs()
            .create_queue()
            .queue_name(name)
            .send()
            .await
            .expect("moto creates a queue")
            .queue_url
            .expect("a queue URL")
    }

    /// Messages in the queue, visible or in flight.
    pub async fn queued(&self, url: &str) -> usize {
        use aws_sdk_sqs::types::QueueAttributeName;
        let attributes = self
            .sqs()
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .send()
            .await
            .expect("moto reads the queue's attributes")
            .attributes
            .unwrap_or_default();
        attributes
            .values()
            .map(|n| n.parse::<usize>().expect("a count"))
            .sum()
    }

    /// An EC2 client talking to this moto directly.
    pub fn ec2(&self) -> aws_sdk_ec2::Client {
        self.ec2.clone()
    }

    /// A default subnet of the default VPC: `(subnet_id, availability_zone)`.
    /// With `az`, the one in that zone; otherwise the one in the
    /// alphabetically first zone.
    pub async fn default_subnet(&self, az: Option<&str>) -> (String, String) {
        let mut request = self
            .ec2
            .describe_subnets()
            .filters(filter("default-for-az", "true"));
        if let Some(az) = az {
            request = request.filters(filter("availability-zone", az));
        }
        let output = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeSubnets: {}", DisplayErrorContext(&e)));
        let mut subnets: Vec<(String, String)> = output
            .subnets()
            .iter()
            .filter_map(|s| {
                Some((
                    s.subnet_id()?.to_string(),
                    s.availability_zone()?.to_string(),
                ))
            })
            .collect();
        subnets.sort_by(|a, b| a.1.cmp(&b.1));
        subnets
            .into_iter()
            .next()
            .unwrap_or_else(|| panic!("moto has no default subnet (az filter: {az:?})"))
    }

    /// The id of a preloaded AMI: an Amazon Linux 2 x86_64 EBS image if there
    /// is one, otherwise the first image by id.
    pub async fn some_ami(&self) -> String {
        let preferred = self
            .ec2
            .describe_images()
            .owners("amazon")
            .filters(filter("architecture", "x86_64"))
            .filters(filter("root-device-type", "ebs"))
            .filters(filter("state", "available"))
            .filters(filter("name", "amzn2-ami-hvm-*"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeImages: {}", DisplayErrorContext(&e)));
        if let Some(id) = first_image_id(preferred.images()) {
            return id;
        }
        let any = self
            .ec2
            .describe_images()
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeImages: {}", DisplayErrorContext(&e)));
        first_image_id(any.images()).expect("moto has no AMIs")
    }

    /// Launches one `t3.micro` from [`Moto::some_ami`] in the default subnet
    /// of the first zone, tagged `key=value`; returns its id.
    pub async fn run_tagged(&self, key: &str, value: &str) -> String {
        use aws_sdk_ec2::types::{InstanceType, ResourceType, Tag, TagSpecification};

        let ami = self.some_ami().await;
        let (subnet, _) = self.default_subnet(None).await;
        let output = self
            .ec2
            .run_instances()
            .image_id(ami)
            .instance_type(InstanceType::T3Micro)
            .subnet_id(subnet)
            .min_count(1)
            .max_count(1)
            .tag_specifications(
                TagSpecification::builder()
                    .resource_type(ResourceType::Instance)
                    .tags(Tag::builder().key(key).value(value).build())
                    .build(),
            )
            .send()
            .await
            .unwrap_or_else(|e| panic!("RunInstances: {}", DisplayErrorContext(&e)));
        output
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .expect("RunInstances returned no instance id")
            .to_string()
    }

    /// Every instance tagged `key=value`, in any state (terminated included).
    pub async fn instances_tagged(&self, key: &str, value: &str) -> Vec<Instance> {
        let mut instances = Vec::new();
        let mut token: Option<String> = None;
        // moto does not paginate DescribeInstances unless asked; the bound
        // only guards against a runaway token.
        for _ in 0..100 {
            let output = self
                .ec2
                .describe_instances()
                .filters(filter(&format!("tag:{key}"), value))
                .set_next_token(token.take())
                .send()
                .await
                .unwrap_or_else(|e| panic!("DescribeInstances: {}", DisplayErrorContext(&e)));
            instances.extend(
                output
                    .reservations()
                    .iter()
                    .flat_map(|r| r.instances().iter().cloned()),
            );
            match output.next_token() {
                Some(next) if !next.is_empty() => token = Some(next.to_string()),
                _ => return instances,
            }
        }
        panic!("DescribeInstances kept returning a next token");
    }

    /// The instance with this id, in any state, or `None` if moto does not
    /// know it.
    pub async fn instance(&self, id: &str) -> Option<Instance> {
        let output = self
            .ec2
            .describe_instances()
            .filters(filter("instance-id", id))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeInstances: {}", DisplayErrorContext(&e)));
        output
            .reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
            .cloned()
    }

    /// The volume with this id, or `None` if moto does not know it.
    /// Every volume tagged `key=value`, root volumes included.
    pub async fn volumes_tagged(&self, key: &str, value: &str) -> Vec<Volume> {
        self.ec2
            .describe_volumes()
            .filters(filter(&format!("tag:{key}"), value))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeVolumes: {}", DisplayErrorContext(&e)))
            .volumes()
            .to_vec()
    }

    pub async fn volume(&self, id: &str) -> Option<Volume> {
        let output = self
            .ec2
            .describe_volumes()
            .filters(filter("volume-id", id))
            .send()
            .await
            .unwrap_or_else(|e| panic!("DescribeVolumes: {}", DisplayErrorContext(&e)));
        output
            .volumes()
            .iter()
            .find(|v| v.volume_id() == Some(id))
            .cloned()
    }

    /// Terminates the instance (panics on error).
    pub async fn terminate(&self, id: &str) {
        self.ec2
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("TerminateInstances {id}: {}", DisplayErrorContext(&e)));
    }

    /// Stops the instance (panics on error).
    pub async fn stop(&self, id: &str) {
        self.ec2
            .stop_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("StopInstances {id}: {}", DisplayErrorContext(&e)));
    }

    /// Starts the instance (panics on error).
    pub async fn start_instance(&self, id: &str) {
        self.ec2
            .start_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("StartInstances {id}: {}", DisplayErrorContext(&e)));
    }
}

/// A one-value EC2 filter.
pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

fn first_image_id(images: &[aws_sdk_ec2::types::Image]) -> Option<String> {
    let mut ids: Vec<&str> = images.iter().filter_map(|i| i.image_id()).collect();
    ids.sort_unstable();
    ids.first().map(|id| id.to_string())
}

/// A port that was free on 127.0.0.1 a moment ago.
fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local address").port()
}
