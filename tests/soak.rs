//! The soak, short: `cloudci serve` for 30 s with signed deliveries at 20/s, a build every 3 s
//! and subscribers connecting and leaving. No fd may leak (idle before vs idle after, with room
//! for a few the daemon opens lazily) and RSS may not run away (a generous bound: the point is a
//! leak proportional to the load, thousands of deliveries and hundreds of connections). The hour
//! is `target/release/soak`; see RELIABILITY.md.

use std::path::PathBuf;

use cloudci_chaos::soak::{SoakOptions, soak};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_under_steady_load_keeps_fds_and_memory_bounded() {
    let report = soak(SoakOptions {
        cloudci: PathBuf::from(env!("CARGO_BIN_EXE_cloudci")),
        duration_secs: 30.0,
        sample_secs: 2.0,
        delivery_rate: 20.0,
        build_every_secs: 3.0,
        subscribers: 4,
        warmup: 0.25,
        ..SoakOptions::default()
    })
    .await
    .expect("the soak could be carried out");
    println!("{report}");
    assert_eq!(report.deliveries[1], 0, "deliveries refused or unanswered; see {}", report.dir.display());
    // Floors far below what an idle machine does (~500, ~40, 10), so a loaded CI machine passes.
    assert!(report.deliveries[0] >= 100, "only {} deliveries accepted", report.deliveries[0]);
    assert!(report.subscribers[0] >= 10, "only {} subscriber connections", report.subscribers[0]);
    assert!(report.builds[0] >= 3, "only {} builds started", report.builds[0]);
    assert!(
        report.fds_idle_end <= report.fds_idle_start + 8,
        "fds: {} idle before, {} idle after the load: {:?}",
        report.fds_idle_start,
        report.fds_idle_end,
        report.fd_kinds
    );
    assert!(
        report.rss_end_kib <= report.rss_warm_kib * 3 / 2 + 64 * 1024,
        "RSS grew from {} KiB (warm) to {} KiB",
        report.rss_warm_kib,
        report.rss_end_kib
    );
    // Kept when an assertion failed (the messages name it); removed when all held.
    let _ = std::fs::remove_dir_all(&report.dir);
}
