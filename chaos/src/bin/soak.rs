//! `soak`: runs `cloudci serve` under steady load for a while (an hour by default) and says
//! whether its memory and file descriptors stayed flat.
//!
//! ```text
//! cargo build --release
//! target/release/soak --duration 3600     # samples in <dir>/soak.jsonl, summary in <dir>/summary.json
//! ```
//!
//! Exit status: 0 when memory and file descriptors stayed flat and every delivery was accepted;
//! 1 when not; 2 when the soak could not be carried out. It stops by itself after `--duration`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use cloudci_chaos::soak::{SoakOptions, soak};

/// `cloudci serve` with signed deliveries at a steady rate, builds starting and finishing, and SSE
/// subscribers connecting and leaving; RSS, open fds, database size and ingest latency sampled.
#[derive(Debug, Parser)]
#[command(name = "soak", version)]
struct Args {
    /// The cloudci executable (default: `cloudci` next to this program).
    #[arg(long, value_name = "PATH")]
    cloudci: Option<PathBuf>,
    /// Seconds of load.
    #[arg(long, default_value_t = 3600.0)]
    duration: f64,
    /// Seconds between samples.
    #[arg(long, default_value_t = 10.0)]
    sample: f64,
    /// Signed deliveries per second.
    #[arg(long, default_value_t = 5.0)]
    rate: f64,
    /// Seconds between two builds (`POST /v1/builds`).
    #[arg(long, default_value_t = 10.0)]
    build_every: f64,
    /// SSE subscribers connecting and leaving at any time.
    #[arg(long, default_value_t = 4)]
    subscribers: usize,
    /// Where the run's files go (default: a new directory under the temporary directory).
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// CLOUDCI_LOG for serve (its stderr goes to the run directory).
    #[arg(long, default_value = "info")]
    serve_log: String,
    /// Print the report as JSON (samples included).
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
    let opts = SoakOptions {
        cloudci: a.cloudci.unwrap_or_else(default_cloudci),
        duration_secs: a.duration,
        sample_secs: a.sample,
        delivery_rate: a.rate,
        build_every_secs: a.build_every,
        subscribers: a.subscribers,
        dir: a.dir,
        serve_log: a.serve_log,
        ..SoakOptions::default()
    };
    match soak(opts).await {
        Ok(report) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report).unwrap_or_default());
            } else {
                println!("{report}");
            }
            let clean = report.memory_flat && report.fds_flat && report.deliveries[1] == 0;
            if clean { ExitCode::SUCCESS } else { ExitCode::from(1) }
        }
        Err(e) => {
            eprintln!("soak: {e}");
            ExitCode::from(2)
        }
    }
}
