//! `chaos`: runs cloudci's chaos test and prints what it measured.
//!
//! ```text
//! cargo build --release
//! cargo run --release -p cloudci-chaos -- --pipelines 200
//! ```
//!
//! Exit status: 0 when nothing was lost, wrong, backwards or repeated; 1 when something was;
//! 2 when the run could not be carried out.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloudci_chaos::Options;

/// N pipelines on gitlab-sim with delivery and API faults; `cloudci serve` killed, frozen and
/// absent on a schedule; an SSE subscriber resuming by Last-Event-ID; its view compared with the
/// sim's truth.
#[derive(Debug, Parser)]
#[command(name = "chaos", version)]
struct Args {
    /// The cloudci executable (default: `cloudci` next to this program).
    #[arg(long, value_name = "PATH")]
    cloudci: Option<PathBuf>,
    /// Pipelines to create.
    #[arg(long, default_value_t = 200)]
    pipelines: usize,
    /// Pipelines created per second.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// The creation phase lasts at least this many seconds (room for the disruptions).
    #[arg(long, default_value_t = 75.0)]
    min_duration: f64,
    /// gitlab-sim faults (deliveries and API), e.g. drop=0.2,duplicate=0.1,reorder=0.2,delay=0..200,api_429=0.02,api_5xx=0.02.
    #[arg(long, default_value = "drop=0.2,duplicate=0.1,reorder=0.2,delay=0..200,api_429=0.02,api_5xx=0.02")]
    faults: String,
    /// First hook auto-disable period in ms (GitLab: 60000).
    #[arg(long, default_value_t = 2000)]
    disable_backoff_ms: u64,
    /// Seed for the faults and the harness's choices.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Jobs the sim runs at once.
    #[arg(long, default_value_t = 12)]
    runners: usize,
    /// Share of pipelines whose `test` job fails.
    #[arg(long, default_value_t = 0.1)]
    fail_ratio: f64,
    /// Pipelines cancelled shortly after creation, then retried.
    #[arg(long, default_value_t = 5)]
    cancel_retry: usize,
    /// No disruptions of serve (faults only: a baseline).
    #[arg(long)]
    no_disruptions: bool,
    /// SIGKILLs of serve, each followed by a restart.
    #[arg(long, default_value_t = 2)]
    kills: usize,
    /// Milliseconds between a SIGKILL and the restart.
    #[arg(long, default_value_t = 1500)]
    restart_after_ms: u64,
    /// Seconds serve is stopped (SIGSTOP, then SIGCONT); 0 for none.
    #[arg(long, default_value_t = 15.0)]
    stop_secs: f64,
    /// Seconds serve is down in the outage; 0 for none.
    #[arg(long, default_value_t = 20.0)]
    outage_secs: f64,
    /// serve's `reconcile_after`, in seconds.
    #[arg(long, default_value_t = 3)]
    reconcile_after: u64,
    /// At the end, stop waiting for events after this many seconds without one.
    #[arg(long, default_value_t = 20.0)]
    quiet: f64,
    /// At the end, stop waiting for events after this many seconds in any case.
    #[arg(long, default_value_t = 120.0)]
    settle_timeout: f64,
    /// Where the run's files go (default: a new directory under the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// CLOUDCI_LOG for serve (its stderr goes to the run directory).
    #[arg(long, default_value = "info")]
    serve_log: String,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

fn default_cloudci() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join(format!("cloudci{}", std::env::consts::EXE_SUFFIX))))
        .unwrap_or_else(|| PathBuf::from("cloudci"))
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    let opts = Options {
        cloudci: a.cloudci.unwrap_or_else(default_cloudci),
        pipelines: a.pipelines,
        rate: a.rate,
        min_duration_secs: a.min_duration,
        faults: a.faults,
        disable_backoff_ms: a.disable_backoff_ms,
        seed: a.seed,
        runners: a.runners,
        fail_ratio: a.fail_ratio,
        cancel_retry: a.cancel_retry,
        disrupt: !a.no_disruptions,
        kills: a.kills,
        restart_after_ms: a.restart_after_ms,
        stop_secs: a.stop_secs,
        outage_secs: a.outage_secs,
        reconcile_after: a.reconcile_after,
        quiet_secs: a.quiet,
        settle_timeout_secs: a.settle_timeout,
        dir: a.dir,
        serve_log: a.serve_log,
        ..Options::default()
    };
    if !a.json {
        eprintln!("chaos: {} pipelines at {}/s against {} ...", opts.pipelines, opts.rate, opts.cloudci.display());
    }
    match cloudci_chaos::run(opts).await {
        Ok(report) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                println!("{report}");
            }
            if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("chaos: {e}");
            ExitCode::from(2)
        }
    }
}
