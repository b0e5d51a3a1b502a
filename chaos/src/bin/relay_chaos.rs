//! `relay-chaos`: the team relay's chaos run (`cloudci_chaos::relay`), printed.
//!
//! ```text
//! cargo build --release --bin cloudci -p cloudci-chaos
//! target/release/relay-chaos --pipelines 1000 --subscribers 200
//! ```
//!
//! Exit status: 0 when nothing was lost, repeated, out of order or forbidden and GitLab got no
//! 4xx and no 5xx outside the PostgreSQL outages; 1 otherwise; 2 when the run could not be made.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloudci_chaos::relay::{RelayOptions, run_relay};

/// Three relay instances behind a proxy, one PostgreSQL (restarted once, away once), gitlab-sim
/// with delivery faults, many subscribers with their users' access; kill -9 of an instance on a
/// schedule; every subscriber's view compared with the sim's truth.
#[derive(Debug, Parser)]
#[command(name = "relay-chaos", version)]
struct Args {
    /// The cloudci executable (default: `cloudci` next to this program).
    #[arg(long, value_name = "PATH")]
    cloudci: Option<PathBuf>,
    /// Pipelines to create.
    #[arg(long, default_value_t = 1000)]
    pipelines: usize,
    /// Pipelines created per second.
    #[arg(long, default_value_t = 4.0)]
    rate: f64,
    /// The creation phase lasts at least this many seconds.
    #[arg(long, default_value_t = 120.0)]
    min_duration: f64,
    /// At the end, stop waiting after this many seconds without an event.
    #[arg(long, default_value_t = 30.0)]
    quiet: f64,
    /// SSE subscribers.
    #[arg(long, default_value_t = 200)]
    subscribers: usize,
    /// Relay instances.
    #[arg(long, default_value_t = 3)]
    instances: usize,
    /// Seconds between kills of a random instance.
    #[arg(long, default_value_t = 20.0)]
    kill_every: f64,
    /// Seconds PostgreSQL is away in the outage.
    #[arg(long, default_value_t = 30.0)]
    pg_outage: f64,
    /// gitlab-sim faults.
    #[arg(long)]
    faults: Option<String>,
    /// The relays' `--access-ttl`, in seconds (how long a member's access answer is kept; eve's
    /// revocation is judged against it).
    #[arg(long, default_value_t = 5)]
    access_ttl: u64,
    /// Seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Where the run's files go.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let a = Args::parse();
    let defaults = RelayOptions::default();
    let cloudci = a.cloudci.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("cloudci")))
            .unwrap_or_else(|| PathBuf::from("cloudci"))
    });
    let opts = RelayOptions {
        cloudci,
        pipelines: a.pipelines,
        rate: a.rate,
        min_duration_secs: a.min_duration,
        quiet_secs: a.quiet,
        subscribers: a.subscribers,
        instances: a.instances,
        kill_every_secs: a.kill_every,
        pg_outage_secs: a.pg_outage,
        faults: a.faults.unwrap_or(defaults.faults.clone()),
        access_ttl_secs: a.access_ttl,
        seed: a.seed,
        dir: a.dir,
        ..defaults
    };
    match run_relay(opts).await {
        Ok(report) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                println!("{report}");
            }
            if report.clean() { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("relay-chaos: {e}");
            ExitCode::from(2)
        }
    }
}
