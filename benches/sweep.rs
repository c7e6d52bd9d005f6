//! `make bench`: what the batched sweep costs and buys, against a per-object
//! baseline, and how fast a death is noticed end to end. See BENCHMARKS.md.
//!
//! The simulated cases run on tokio's paused clock, each in its own process
//! (this program re-executed with `--case ...`) so that peak RSS belongs to one
//! strategy and fleet size. The end-to-end runs use real time, moto and the
//! fake Kubernetes API server.
//!
//! Flags: `--no-e2e` skips the end-to-end runs, `--e2e-runs N` changes their
//! number (default 3, each once without and once with EC2 event hints),
//! `--e2e-only` skips the simulated cases.

#[path = "../tests/support/fake_kube.rs"]
#[allow(dead_code)]
mod fake_kube;
#[path = "../tests/support/faults.rs"]
mod faults;
#[path = "../tests/support/moto.rs"]
mod moto;
#[path = "../tests/support/paths.rs"]
mod paths;

#[path = "support/common.rs"]
mod common;
#[path = "support/e2e.rs"]
mod e2e;
#[path = "support/sim.rs"]
mod sim;

use std::process::{Command, ExitCode};

use common::Verdict;
use sim::{BATCH_SIZE, Case, CaseResult, Strategy};

const SIZES: [usize; 3] = [1_000, 10_000, 100_000];
const LATENCY_MS: u64 = 100;
const E2E_WORKSPACES: usize = 20;
const DETECTION_SLACK_SECS: f64 = 2.0;
/// With EC2 event hints, from termination to Offline.
const HINTED_DETECTION_SECS: f64 = 5.0;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(i) = args.iter().position(|a| a == "--case") {
        let case = Case::from_args(&args[i + 1..])
            .expect("--case STRATEGY N LATENCY_MS ERROR_RATE NEIGHBOUR_RPS SWEEPS");
        let result = sim::run_case(case);
        println!(
            "RESULT {}",
            serde_json::to_string(&result).expect("result serialises")
        );
        return ExitCode::SUCCESS;
    }
    let e2e_runs = match args.iter().position(|a| a == "--e2e-runs") {
        Some(i) => args
            .get(i + 1)
            .and_then(|n| n.parse().ok())
            .expect("--e2e-runs N"),
        None => 3,
    };
    let e2e_runs = if args.iter().any(|a| a == "--no-e2e") {
        0
    } else {
        e2e_runs
    };
    if args.iter().any(|a| a == "--e2e-only") {
        return e2e_only(e2e_runs.max(1));
    }
    parent(e2e_runs)
}

/// Only the end-to-end runs and their detection targets.
fn e2e_only(e2e_runs: usize) -> ExitCode {
    println!("tend sweep benchmark, end to end only");
    let (e2e_results, hinted_results) = run_e2e(e2e_runs);
    println!("\n### Acceptance targets\n");
    let mut v = Verdict { failed: false };
    check_detection(&mut v, &e2e_results, &hinted_results);
    v.exit_code()
}

/// The end-to-end runs, without and with EC2 event hints, and their tables.
fn run_e2e(e2e_runs: usize) -> (Vec<e2e::E2eResult>, Vec<e2e::E2eResult>) {
    let mut e2e_results = Vec::new();
    let mut hinted_results = Vec::new();
    if e2e_runs > 0 {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        for run in 1..=e2e_runs {
            eprintln!("end-to-end run {run}/{e2e_runs} ...");
            e2e_results.push(runtime.block_on(e2e::run(E2E_WORKSPACES, false)));
        }
        for run in 1..=e2e_runs {
            eprintln!("end-to-end run with hints {run}/{e2e_runs} ...");
            hinted_results.push(runtime.block_on(e2e::run(E2E_WORKSPACES, true)));
        }
        println!(
            "\n### End to end: real controller, fake API server, moto; {E2E_WORKSPACES} Workspaces, --sweep-interval {} (real time)\n",
            e2e::SWEEP_INTERVAL
        );
        println!(
            "| run | all Online after (s) | steady window: sweeps / status PATCHes / reconciles / DescribeInstances / other EC2 calls | terminate → left Online (s) | first phase seen | Offline written | terminate → Online again (s) |"
        );
        println!("|---:|---:|---|---:|---|---|---:|");
        for (i, r) in e2e_results.iter().enumerate() {
            println!(
                "| {} | {:.1} | {} / {} / {} / {} / {} | {:.2} | {} | {} | {:.2} |",
                i + 1,
                r.all_online_secs,
                r.steady_sweeps,
                r.steady_status_writes,
                r.steady_reconciles,
                r.steady_describe_calls,
                r.steady_other_ec2_calls,
                r.detect_secs,
                r.detected_phase,
                if r.offline_written { "yes" } else { "no" },
                r.recover_secs,
            );
        }
        println!(
            "\n### End to end with EC2 event hints: {E2E_WORKSPACES} Workspaces, --sweep-interval {}, the state-change message queued in moto's SQS right after the termination\n",
            e2e::HINTED_SWEEP_INTERVAL
        );
        println!(
            "| run | terminate → left Online (s) | first phase seen | Offline written | terminate → Online again (s) |"
        );
        println!("|---:|---:|---|---|---:|");
        for (i, r) in hinted_results.iter().enumerate() {
            println!(
                "| {} | {:.2} | {} | {} | {:.2} |",
                i + 1,
                r.detect_secs,
                r.detected_phase,
                if r.offline_written { "yes" } else { "no" },
                r.recover_secs,
            );
        }
    }

    (e2e_results, hinted_results)
}

/// The worst detection time and every run's, for a PASS/FAIL line.
fn detection_times(results: &[e2e::E2eResult]) -> String {
    let worst = results.iter().map(|r| r.detect_secs).fold(0.0, f64::max);
    let all: Vec<String> = results
        .iter()
        .map(|r| format!("{:.2}", r.detect_secs))
        .collect();
    format!(
        "worst {worst:.2} s over {} runs ({} s)",
        results.len(),
        all.join(", ")
    )
}

/// How soon a death was noticed end to end, without and with hints.
fn check_detection(
    v: &mut Verdict,
    e2e_results: &[e2e::E2eResult],
    hinted_results: &[e2e::E2eResult],
) {
    if e2e_results.is_empty() {
        println!(
            "SKIP detection within the sweep interval + {DETECTION_SLACK_SECS} s (end to end skipped)"
        );
    } else {
        let bound = e2e::SWEEP_INTERVAL_SECS + DETECTION_SLACK_SECS;
        v.check(
            e2e_results
                .iter()
                .all(|r| r.detect_secs <= bound && r.offline_written),
            &format!("detection <= sweep interval + {DETECTION_SLACK_SECS} s = {bound} s"),
            detection_times(e2e_results),
        );
    }
    if hinted_results.is_empty() {
        println!("SKIP detection with hints under {HINTED_DETECTION_SECS} s (end to end skipped)");
    } else {
        v.check(
            hinted_results
                .iter()
                .all(|r| r.detect_secs < HINTED_DETECTION_SECS && r.offline_written),
            &format!(
                "with EC2 event hints, termination to Offline under {HINTED_DETECTION_SECS} s (sweeps {} apart)",
                e2e::HINTED_SWEEP_INTERVAL
            ),
            detection_times(hinted_results),
        );
    }
}

/// Runs one case in a child process and reads its one-line result.
fn run_child(case: &Case) -> CaseResult {
    let exe = std::env::current_exe().expect("current executable");
    let out = Command::new(exe)
        .args(case.to_args())
        .output()
        .expect("run a case in a child process");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout
        .lines()
        .find_map(|l| l.strip_prefix("RESULT "))
        .unwrap_or_else(|| {
            panic!(
                "case {case:?} gave no result ({}):\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_str(line).expect("result parses")
}

fn case(strategy: Strategy, n: usize, error_rate: f64, neighbour_rps: f64, sweeps: usize) -> Case {
    Case {
        strategy,
        n,
        latency_ms: LATENCY_MS,
        error_rate,
        neighbour_rps,
        sweeps,
    }
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

fn pct(part: usize, whole: usize) -> f64 {
    100.0 * part as f64 / whole.max(1) as f64
}

fn print_table(title: &str, results: &[CaseResult]) {
    println!("\n### {title}\n");
    println!(
        "| strategy | N | calls made | calls ok / throttled / failed | sweep time (simulated s) | answered within deadline | steady-sweep status writes | peak RSS (MiB) | RSS added by the sweep (MiB) | host time (ms) |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for r in results {
        let time = if r.hit_deadline {
            format!("{:.1} (deadline hit)", r.sweep_secs)
        } else {
            format!("{:.2}", r.sweep_secs)
        };
        println!(
            "| {} | {} | {} | {} / {} / {} | {} | {} ({:.1}%) | {} | {:.1} | {:.1} | {:.0} |",
            r.case.strategy.label(),
            r.case.n,
            r.calls,
            r.ok,
            r.throttled,
            r.failed,
            time,
            r.answered,
            pct(r.answered, r.case.n),
            r.steady_changed,
            mib(r.peak_rss_kib),
            mib(r.peak_rss_kib.saturating_sub(r.rss_before_sweep_kib)),
            r.host_ms,
        );
    }
}

fn parent(e2e_runs: usize) -> ExitCode {
    println!("tend sweep benchmark");
    println!(
        "simulated EC2: one region, AWS bucket burst {} refill {}/s; tend's bucket {}/s burst {}; \
         {} ms per call; batch {}, {} in flight, probe timeout {:?}, deadline {:?} (one sweep interval)",
        sim::AWS_BURST,
        sim::AWS_REFILL_PER_SEC,
        sim::TEND_READ_RATE,
        sim::TEND_READ_BURST,
        LATENCY_MS,
        BATCH_SIZE,
        sim::MAX_IN_FLIGHT,
        sim::PROBE_TIMEOUT,
        sim::SWEEP_INTERVAL,
    );
    println!("sweep times are simulated seconds (tokio's paused clock), not wall time");
    println!(
        "size_of::<aws_sdk_ec2::types::Instance>() = {} bytes (each found id's answer holds one, boxed)",
        std::mem::size_of::<aws_sdk_ec2::types::Instance>()
    );

    let mut headline = Vec::new();
    for n in SIZES {
        for strategy in [Strategy::Batched, Strategy::PerObject] {
            // Two sweeps for tend: the first proves which instances are gone,
            // the second is the steady state.
            let sweeps = if strategy == Strategy::Batched { 2 } else { 1 };
            let c = case(strategy, n, 0.0, 0.0, sweeps);
            eprintln!("running {} N={n} ...", strategy.label());
            headline.push(run_child(&c));
        }
    }
    print_table(
        &format!("Headline: {LATENCY_MS} ms per call, no errors"),
        &headline,
    );

    let mut errors = Vec::new();
    for strategy in [Strategy::Batched, Strategy::PerObject] {
        eprintln!("running {} with 5% errors ...", strategy.label());
        errors.push(run_child(&case(strategy, 10_000, 0.05, 0.0, 1)));
    }
    print_table(
        "5% of calls fail (InternalError); a failed batch is bisected",
        &errors,
    );

    let mut shared = Vec::new();
    for strategy in [Strategy::Batched, Strategy::PerObject] {
        eprintln!("running {} in a shared account ...", strategy.label());
        shared.push(run_child(&case(strategy, 100_000, 0.0, 10.0, 1)));
    }
    print_table(
        "Shared account: other clients spend 10 of AWS's 20 describe calls/s",
        &shared,
    );

    let mut repeated = Vec::new();
    for strategy in [Strategy::Batched, Strategy::PerObject] {
        eprintln!("running {} over 3 sweeps ...", strategy.label());
        repeated.push(run_child(&case(strategy, 10_000, 0.0, 0.0, 3)));
    }
    println!(
        "\n### Three consecutive sweeps (N = 10,000, one interval apart, least recently answered first)\n"
    );
    println!("| strategy | answered in sweep 1 | distinct ids answered after 3 sweeps |");
    println!("|---|---:|---:|");
    for r in &repeated {
        println!(
            "| {} | {} | {} ({:.1}%) |",
            r.case.strategy.label(),
            r.answered,
            r.answered_over_sweeps,
            pct(r.answered_over_sweeps, r.case.n)
        );
    }

    let (e2e_results, hinted_results) = run_e2e(e2e_runs);

    println!("\n### Acceptance targets\n");
    let mut v = Verdict { failed: false };
    let find = |s: Strategy, n: usize| {
        headline
            .iter()
            .find(|r| r.case.strategy == s && r.case.n == n)
            .expect("case ran")
    };
    for n in SIZES {
        let r = find(Strategy::Batched, n);
        let bound = n.div_ceil(BATCH_SIZE) + 1;
        let steady = r.steady_calls.unwrap_or(usize::MAX);
        v.check(
            steady <= bound && r.answered == n,
            &format!(
                "N = {n}: describe calls per steady full sweep <= ceil(N / {BATCH_SIZE}) + 1 = {bound}"
            ),
            format!("{steady} calls, {} of {n} answered", r.answered),
        );
        let gone = sim::gone(n);
        let first_bound = bound + gone.div_ceil(BATCH_SIZE);
        v.check(
            r.calls <= first_bound,
            &format!(
                "N = {n}: the first sweep adds at most ceil(gone / {BATCH_SIZE}) describes by id to prove {gone} gone instances absent: <= {first_bound}"
            ),
            format!("{} calls, {} of them by id", r.calls, r.confirmations),
        );
    }
    let batched = find(Strategy::Batched, 10_000);
    let baseline = find(Strategy::PerObject, 10_000);
    let (baseline_calls, how) = if baseline.answered < baseline.case.n {
        (
            baseline.case.n,
            format!(
                "the per-object baseline cannot finish within the deadline ({} of {} answered in {} calls), so it is compared with the {} calls a full per-object sweep needs",
                baseline.answered, baseline.case.n, baseline.calls, baseline.case.n
            ),
        )
    } else {
        (
            baseline.calls,
            format!("baseline made {} calls", baseline.calls),
        )
    };
    let ratio = baseline_calls as f64 / batched.calls.max(1) as f64;
    v.check(
        ratio >= 100.0,
        "N = 10000: at least 100x fewer calls than one describe per Workspace",
        format!("{ratio:.0}x ({} vs {baseline_calls}; {how})", batched.calls),
    );
    let sim_writes: usize = headline
        .iter()
        .chain(&errors)
        .chain(&shared)
        .map(|r| r.steady_changed)
        .sum();
    let e2e_writes: usize = e2e_results.iter().map(|r| r.steady_status_writes).sum();
    v.check(
        sim_writes == 0 && e2e_writes == 0,
        "zero status writes in a steady sweep",
        format!(
            "{sim_writes} reconciler wake-ups over the simulated steady sweeps; {e2e_writes} status PATCHes over {} steady end-to-end sweeps{}",
            e2e_results.iter().map(|r| r.steady_sweeps).sum::<u64>(),
            if e2e_results.is_empty() { " (end to end skipped)" } else { "" }
        ),
    );
    v.check(
        batched.answered == batched.case.n && batched.sweep_secs < 5.0,
        &format!("a 10,000-Workspace sweep at {LATENCY_MS} ms per call finishes in under 5 s"),
        format!(
            "{:.2} simulated s, {} of {} answered",
            batched.sweep_secs, batched.answered, batched.case.n
        ),
    );
    check_detection(&mut v, &e2e_results, &hinted_results);
    v.exit_code()
}
