//! Command line and environment configuration. Every flag has a `TEND_*` form.

use std::net::SocketAddr;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::telemetry::LogFormat;

#[derive(Debug, Parser)]
#[command(
    name = "tend",
    version,
    about = "Keeps long-lived workspaces honest and alive"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controller.
    Run(Box<RunArgs>),
    /// Print the Workspace CustomResourceDefinition as YAML.
    Crd,
    /// Print the version.
    Version,
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (write durations like 60s, 5m or 1h30m)"))
}

/// A Lease counts whole seconds, and its holder renews a third of the
/// duration before it ends.
fn lease_duration(s: &str) -> Result<Duration, String> {
    let d = duration(s)?;
    if d.subsec_nanos() != 0 || d < Duration::from_secs(3) {
        return Err("a lease duration is whole seconds, at least 3s".into());
    }
    Ok(d)
}

/// A label selector as the API server takes it: requirements separated by
/// commas, each `key`, `!key`, `key=value`, `key==value`, `key!=value`,
/// `key in (a,b)` or `key notin (a,b)`.
fn label_selector(s: &str) -> Result<String, String> {
    fn name(part: &str) -> bool {
        let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
        let (prefix, last) = match part.rsplit_once('/') {
            Some((p, l)) => (Some(p), l),
            None => (None, part),
        };
        let dns = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.');
        prefix.is_none_or(|p| !p.is_empty() && p.len() <= 253 && p.chars().all(dns))
            && !last.is_empty()
            && last.len() <= 63
            && last.chars().all(ok)
    }
    fn value(v: &str) -> bool {
        v.len() <= 63
            && v.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    }
    let mut requirements = Vec::new();
    let (mut depth, mut start) = (0usize, 0usize);
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                requirements.push(&s[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    requirements.push(&s[start..]);
    for r in requirements.iter().map(|r| r.trim()) {
        let valid = if let Some(key) = r.strip_prefix('!') {
            name(key.trim())
        } else if let Some((key, v)) = r
            .split_once("!=")
            .or_else(|| r.split_once("=="))
            .or_else(|| r.split_once('='))
        {
            name(key.trim()) && value(v.trim())
        } else if let Some((key, rest)) = r.split_once(' ') {
            let rest = rest.trim();
            let set = rest
                .strip_prefix("notin")
                .or_else(|| rest.strip_prefix("in"))
                .map(str::trim)
                .and_then(|s| s.strip_prefix('('))
                .and_then(|s| s.strip_suffix(')'));
            name(key.trim()) && set.is_some_and(|set| set.split(',').all(|v| value(v.trim())))
        } else {
            name(r)
        };
        if !valid {
            return Err(format!(
                "{r:?} is not a label requirement (write key=value, key!=value, key in (a,b), key notin (a,b), key or !key, separated by commas)"
            ));
        }
    }
    Ok(s.to_string())
}

#[derive(Debug, Clone, Args)]
pub struct RunArgs {
    /// Watch only this namespace (default: all namespaces).
    #[arg(long, env = "TEND_NAMESPACE")]
    pub namespace: Option<String>,

    /// Own only the Workspaces whose labels match this selector: only they are
    /// watched, swept and reconciled. For sharding a very large fleet, e.g.
    /// `tend.dev/shard=a`; give each shard its own --lease-name.
    #[arg(long, env = "TEND_LABEL_SELECTOR", value_parser = label_selector)]
    pub label_selector: Option<String>,

    /// Elect one leader among the replicas on a Lease; only the leader
    /// reconciles and sweeps, the others stand by to take over.
    #[arg(long, env = "TEND_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the Lease (coordination.k8s.io) the replicas elect a leader on.
    #[arg(long, env = "TEND_LEASE_NAME", default_value = "tend")]
    pub lease_name: String,

    /// Namespace of the Lease (default: the namespace tend runs in, or the
    /// kubeconfig's).
    #[arg(long, env = "TEND_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// How long the Lease stays held after its last renewal: when a leader
    /// dies without giving it up, a standby takes over within about this long.
    /// The leader renews a third of it before it ends, and stops acting when a
    /// renewal fails. Whole seconds, at least 3s.
    #[arg(long, env = "TEND_LEASE_DURATION", value_parser = lease_duration, default_value = "15s")]
    pub lease_duration: Duration,

    /// This replica's name in the Lease (default: the host name, a Pod's name
    /// in a cluster, and the process id).
    #[arg(long, env = "TEND_LEASE_IDENTITY")]
    pub lease_identity: Option<String>,

    /// On SIGTERM tend takes no new work; reconciles in flight get this long
    /// to finish before tend gives up the Lease and exits.
    #[arg(long, env = "TEND_SHUTDOWN_TIMEOUT", value_parser = duration, default_value = "20s")]
    pub shutdown_timeout: Duration,

    /// AWS region for Workspaces that name none (default: the AWS SDK's region chain).
    #[arg(long, env = "TEND_REGION")]
    pub region: Option<String>,

    /// EC2 endpoint URL, e.g. for moto or LocalStack. AWS_ENDPOINT_URL_EC2 also works.
    #[arg(long, env = "TEND_EC2_ENDPOINT")]
    pub ec2_endpoint: Option<String>,

    /// An SQS queue that EventBridge fills with EC2 instance state-change
    /// notifications and spot interruption warnings (docs/ec2-events.md). A
    /// message about one of tend's instances makes the sweeper look at its
    /// region at once; what EC2 answers decides, never the message.
    #[arg(long, env = "TEND_SQS_QUEUE_URL")]
    pub sqs_queue_url: Option<String>,

    /// SQS endpoint URL, e.g. for moto. AWS_ENDPOINT_URL_SQS also works.
    #[arg(long, env = "TEND_SQS_ENDPOINT")]
    pub sqs_endpoint: Option<String>,

    /// Name of this cluster, written to the tend.dev/cluster tag of every resource
    /// tend creates and required on every resource it changes.
    #[arg(long, env = "TEND_CLUSTER_NAME", default_value = "default")]
    pub cluster_name: String,

    /// Address of the HTTP port serving /metrics, /healthz and /readyz.
    #[arg(long, env = "TEND_METRICS_ADDR", default_value = "0.0.0.0:8080")]
    pub metrics_addr: SocketAddr,

    /// Log format.
    #[arg(long, env = "TEND_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// How many Workspaces are reconciled at once. A reconcile mostly waits
    /// for EC2 or the API server, and only reconciles running together share
    /// a window of reads, so a burst of creations wants many.
    #[arg(long, env = "TEND_CONCURRENCY", default_value_t = 64)]
    pub concurrency: u16,

    /// Timeout of each backend call (to EC2, or to the Kubernetes API about Pods).
    #[arg(long, env = "TEND_PROBE_TIMEOUT", value_parser = duration, default_value = "10s")]
    pub probe_timeout: Duration,

    /// How long after launch a missing instance (or Pod) is still taken for
    /// EC2's eventual consistency rather than proof of death.
    #[arg(long, env = "TEND_NOT_FOUND_GRACE", value_parser = duration, default_value = "5m")]
    pub not_found_grace: Duration,

    /// Safety resync: how often a settled Workspace is reconciled again. One
    /// whose inputs did not change costs nothing; one the sweep does not
    /// cover (Stopped, Hibernated, Failed) is looked at again.
    #[arg(long, env = "TEND_RESYNC_INTERVAL", value_parser = duration, default_value = "10m")]
    pub resync_interval: Duration,

    /// How soon to look again while a launch, start, stop or teardown is under way.
    #[arg(long, env = "TEND_PROGRESS_INTERVAL", value_parser = duration, default_value = "5s")]
    pub progress_interval: Duration,

    /// First retry delay after an error; it doubles per consecutive error, up to 10m.
    #[arg(long, env = "TEND_ERROR_BACKOFF", value_parser = duration, default_value = "10s")]
    pub error_backoff: Duration,

    /// How often the sweeper asks the backends about every Workspace that should be running.
    #[arg(long, env = "TEND_SWEEP_INTERVAL", value_parser = duration, default_value = "60s")]
    pub sweep_interval: Duration,

    /// Instance ids per DescribeInstances call.
    #[arg(long, env = "TEND_BATCH_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub batch_size: u32,

    /// At most this many Workspaces are described per sweep, least recently
    /// answered first; a larger fleet is covered over several sweeps.
    #[arg(long, env = "TEND_MAX_PER_SWEEP", default_value_t = 20000)]
    pub max_per_sweep: usize,

    /// Backend calls in flight at once (DescribeInstances, or Pod reads).
    #[arg(long, env = "TEND_MAX_IN_FLIGHT", default_value_t = 8)]
    pub max_in_flight: usize,

    /// After only Unknown answers for this long, Ready becomes Unknown/ObservationStale.
    #[arg(long, env = "TEND_STALE_AFTER", value_parser = duration, default_value = "5m")]
    pub stale_after: Duration,

    /// The circuit breaker trips when more than this fraction of a region's
    /// (or a zone's) Workspaces turn NotRunning in one sweep.
    #[arg(long, env = "TEND_MAX_OFFLINE_FRACTION", default_value_t = 0.2)]
    pub max_offline_fraction: f64,

    /// After a held mass failure proves real, at most this many are healed per sweep.
    #[arg(long, env = "TEND_MAX_RESTARTS_PER_SWEEP", default_value_t = 50)]
    pub max_restarts_per_sweep: usize,

    /// First delay between restarts of a dying backend; it doubles up to 10m.
    #[arg(long, env = "TEND_RESTART_BACKOFF", value_parser = duration, default_value = "10s")]
    pub restart_backoff: Duration,

    /// Client-side rate of EC2 Describe calls per second, per region (AWS refills 20/s).
    #[arg(long, env = "TEND_EC2_READ_RATE", default_value_t = 15.0)]
    pub ec2_read_rate: f64,

    /// Client-side burst of EC2 Describe calls, per region (AWS allows 100).
    #[arg(long, env = "TEND_EC2_READ_BURST", default_value_t = 75)]
    pub ec2_read_burst: u32,

    /// Client-side rate of mutating EC2 calls per second, per region.
    #[arg(long, env = "TEND_EC2_MUTATE_RATE", default_value_t = 4.0)]
    pub ec2_mutate_rate: f64,

    /// Client-side burst of mutating EC2 calls, per region.
    #[arg(long, env = "TEND_EC2_MUTATE_BURST", default_value_t = 20)]
    pub ec2_mutate_burst: u32,
}

impl RunArgs {
    /// Parses `tend run` flags from an argument list (without the `run` word).
    pub fn from_flags<I, T>(flags: I) -> Result<RunArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(Parser)]
        struct Only {
            #[command(flatten)]
            args: RunArgs,
        }
        let argv = std::iter::once(std::ffi::OsString::from("tend"))
            .chain(flags.into_iter().map(Into::into));
        Only::try_parse_from(argv).map(|o| o.args)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_take_units() {
        let args =
            RunArgs::from_flags(["--not-found-grace", "90s", "--resync-interval", "5m"]).unwrap();
        assert_eq!(args.not_found_grace, Duration::from_secs(90));
        assert_eq!(args.resync_interval, Duration::from_secs(300));
    }

    #[test]
    fn a_bare_number_is_rejected_with_a_hint() {
        let err = RunArgs::from_flags(["--probe-timeout", "10"]).unwrap_err();
        assert!(err.to_string().contains("60s"), "{err}");
    }

    #[test]
    fn lease_durations_are_whole_seconds_of_at_least_three() {
        let args = RunArgs::from_flags(["--lease-duration", "10s"]).unwrap();
        assert_eq!(args.lease_duration, Duration::from_secs(10));
        assert_eq!(
            RunArgs::from_flags(Vec::<&str>::new())
                .unwrap()
                .lease_duration,
            Duration::from_secs(15)
        );
        for bad in ["2s", "3500ms"] {
            let err = RunArgs::from_flags(["--lease-duration", bad]).unwrap_err();
            assert!(err.to_string().contains("whole seconds"), "{bad}: {err}");
        }
    }

    #[test]
    fn label_selectors_are_checked_before_they_reach_the_api_server() {
        for good in [
            "tend.dev/shard=a",
            "tend.dev/shard==a,team!=ml",
            "tend.dev/shard in (a, b),!legacy",
            "env notin (dev),tier",
            "shard=",
        ] {
            let args = RunArgs::from_flags(["--label-selector", good]).unwrap();
            assert_eq!(args.label_selector.as_deref(), Some(good));
        }
        for bad in ["shard=a b", "=a", "shard in a,b", "a//b=c", "shard=(a)", ""] {
            let err = RunArgs::from_flags(["--label-selector", bad]).unwrap_err();
            assert!(
                err.to_string().contains("label requirement"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
