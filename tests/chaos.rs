//! The chaos test, small: ~50 pipelines on gitlab-sim with delivery and API faults, `cloudci
//! serve` killed twice, stopped for longer than GitLab's delivery timeout and absent for 20 s,
//! and a subscriber resuming by `Last-Event-ID` whose view must match the sim's to the last
//! status. The full run (1,000 pipelines) is `cargo run --release -p cloudci-chaos`; see
//! RELIABILITY.md.

use std::path::PathBuf;

use cloudci_chaos::{Options, run};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_final_status_reaches_the_subscriber_once_and_in_order() {
    let report = run(Options {
        cloudci: PathBuf::from(env!("CARGO_BIN_EXE_cloudci")),
        pipelines: 50,
        rate: 1.0,
        min_duration_secs: 60.0,
        cancel_retry: 3,
        stop_secs: 15.0,
        outage_secs: 20.0,
        quiet_secs: 15.0,
        settle_timeout_secs: 60.0,
        finish_timeout_secs: 120.0,
        ..Options::default()
    })
    .await
    .expect("the chaos run could be carried out");
    println!("{report}");
    assert_eq!(report.unfinished_on_sim, 0, "the sim did not finish every pipeline");
    assert_eq!(report.create_failures, 0, "the harness could not create every pipeline");
    assert!(report.pipelines >= 50 && report.jobs >= 200, "{} pipelines, {} jobs", report.pipelines, report.jobs);
    assert_eq!(report.disruptions.len(), 4, "{:?}", report.disruptions);
    let c = &report.counts;
    assert_eq!(
        (c.pipelines_lost, c.jobs_lost, c.pipelines_wrong, c.jobs_wrong),
        (0, 0, 0, 0),
        "final statuses lost or wrong; see {}",
        report.dir.join("failures.json").display()
    );
    assert_eq!(
        (c.pipelines_backwards, c.jobs_backwards, c.pipelines_repeated, c.jobs_repeated, c.seq_repeated),
        (0, 0, 0, 0, 0),
        "events backwards or repeated; see {}",
        report.dir.join("failures.json").display()
    );
}
