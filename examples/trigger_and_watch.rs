//! Start a pipeline and watch it until it finishes, printing each job's status change.
//!
//! ```text
//! GITLAB_HOST=https://gitlab.example.com GITLAB_TOKEN=glpat-... \
//!     cargo run --example trigger_and_watch -- acme/firmware main BOARD=nucleo-f401re
//! ```
//! Exits 0 when the pipeline succeeds, 1 otherwise.

use std::collections::BTreeMap;
use std::time::Duration;

use cloudci_gitlab::types::CreatePipeline;
use cloudci_gitlab::{Gitlab, JobFilter};
use futures_util::TryStreamExt;
use secrecy::SecretString;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let (Some(project), Some(git_ref)) = (args.next(), args.next()) else {
        eprintln!("usage: trigger_and_watch <project> <ref> [KEY=VALUE]...");
        std::process::exit(2);
    };
    let url = std::env::var("GITLAB_HOST").unwrap_or_else(|_| "https://gitlab.com".into());
    let token = SecretString::from(std::env::var("GITLAB_TOKEN").map_err(|_| "GITLAB_TOKEN is not set")?);
    let gitlab = Gitlab::new(url, token)?;

    let mut params = CreatePipeline::new(git_ref);
    for var in args {
        let (k, v) = var.split_once('=').ok_or("variables are KEY=VALUE")?;
        params = params.variable(k, v);
    }
    let pipeline = gitlab.create_pipeline(project.as_str(), &params).await?;
    println!("pipeline {} started: {}", pipeline.id, pipeline.web_url);

    // Polling, for the example's sake; cloudci itself follows webhooks and polls only as a fallback.
    let mut seen = BTreeMap::new();
    loop {
        let jobs: Vec<_> =
            gitlab.pipeline_jobs(project.as_str(), pipeline.id, &JobFilter::default()).try_collect().await?;
        for job in jobs {
            if seen.insert(job.id, job.status.clone()) != Some(job.status.clone()) {
                println!("  {:<20} {}", job.name, job.status);
            }
        }
        let now = gitlab.pipeline(project.as_str(), pipeline.id).await?;
        if now.status.is_completed() {
            println!("pipeline {}: {}", now.id, now.status);
            std::process::exit(if now.status == cloudci_gitlab::types::Status::Success { 0 } else { 1 });
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
}
