//! The log's writer: stderr, whose failures never reach the code that logs.
//!
//! tracing-subscriber's own writer reports a failed write with `eprintln!`, which panics when
//! stderr itself cannot be written — a full disk under a redirected log. The panic happened in
//! whatever logged: a request's span closing, so hyper dropped the connection without an answer
//! (issue 16: 31 connections closed that way). Here a failed line is dropped and counted, the
//! daemon's health says the log cannot be written, and the first line written after says how many
//! were lost (starting on a new line: the last one may have stopped half-way).

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use cloudci_webhook::{Health, Problem};
use tracing_subscriber::fmt::MakeWriter;

/// Lines that could not be written since start.
static LOST: AtomicU64 = AtomicU64::new(0);
/// Lines lost since the last one written (said in the next one that is).
static LOST_SINCE: AtomicU64 = AtomicU64::new(0);
/// The daemon's health, told when the log stops and starts working.
static HEALTH: OnceLock<Health> = OnceLock::new();

/// Log lines that could not be written since start.
pub fn lost_lines() -> u64 {
    LOST.load(Ordering::Relaxed)
}

/// From now on a log that cannot be written is reported in `health` (the daemon's).
pub fn report_to(health: &Health) {
    let _ = HEALTH.set(health.clone());
}

/// A [`MakeWriter`] over a sink (stderr in the binary) that swallows and counts write errors.
#[derive(Debug)]
pub struct Swallowing<F> {
    sink: Mutex<F>,
}

impl<F> Swallowing<F> {
    /// Writes each line into `sink`.
    pub fn new(sink: F) -> Self {
        Self { sink: Mutex::new(sink) }
    }
}

/// Stderr, for the binary.
pub fn stderr() -> Swallowing<fn() -> io::Stderr> {
    Swallowing::new(io::stderr)
}

/// One line's writer.
#[derive(Debug)]
pub struct Line<'a, F> {
    of: &'a Swallowing<F>,
}

impl<'a, F: FnMut() -> W + 'static, W: Write> MakeWriter<'a> for Swallowing<F> {
    type Writer = Line<'a, F>;

    fn make_writer(&'a self) -> Self::Writer {
        Line { of: self }
    }
}

impl<F: FnMut() -> W, W: Write> Write for Line<'_, F> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.write_all(buf)?;
        Ok(buf.len())
    }

    /// The whole line or nothing said about it: the caller never sees an error.
    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        let mut sink = self.of.sink.lock().unwrap_or_else(|e| e.into_inner());
        let mut out = (sink)();
        let lost = LOST_SINCE.load(Ordering::Relaxed);
        let result = if lost > 0 {
            let notice = format!("\n[cloudci] {lost} log lines could not be written\n");
            out.write_all(notice.as_bytes()).and_then(|()| out.write_all(buf))
        } else {
            out.write_all(buf)
        }
        .and_then(|()| out.flush());
        match result {
            Ok(()) => {
                if lost > 0 {
                    LOST_SINCE.fetch_sub(lost, Ordering::Relaxed);
                }
                if let Some(h) = HEALTH.get() {
                    h.clear(Problem::LogUnwritable);
                }
            }
            Err(e) => {
                LOST.fetch_add(1, Ordering::Relaxed);
                LOST_SINCE.fetch_add(1, Ordering::Relaxed);
                if let Some(h) = HEALTH.get() {
                    h.set(Problem::LogUnwritable, &e);
                }
            }
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A sink that fails (as a full disk does, half-way through a line) while `full` is set.
    #[derive(Clone, Default)]
    struct Disk {
        full: Arc<AtomicBool>,
        text: Arc<Mutex<Vec<u8>>>,
    }

    impl Write for Disk {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            if self.full.load(Ordering::SeqCst) {
                let half = buf.len() / 2;
                if half == 0 {
                    return Err(io::Error::from_raw_os_error(28));
                }
                self.text.lock().unwrap().extend_from_slice(&buf[..half]);
                self.full.store(true, Ordering::SeqCst);
                return Ok(half);
            }
            self.text.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_full_log_disk_drops_and_counts_lines_and_never_fails_or_panics_the_caller() {
        let disk = Disk::default();
        let sink = disk.clone();
        let health = Health::new();
        report_to(&health);
        let subscriber = tracing_subscriber::fmt()
            .with_writer(Swallowing::new(move || sink.clone()))
            .with_ansi(false)
            .without_time()
            .finish();
        let before = lost_lines();
        tracing::subscriber::with_default(subscriber, || {
            tracing::callsite::rebuild_interest_cache();
            tracing::info!("first line");
            disk.full.store(true, Ordering::SeqCst);
            for i in 0..3 {
                // Would panic with tracing-subscriber's own writer (its `eprintln!`).
                tracing::info!(i, "while the disk is full");
            }
            assert!(health.has(Problem::LogUnwritable));
            disk.full.store(false, Ordering::SeqCst);
            tracing::info!("space is back");
        });
        assert!(lost_lines() - before >= 3);
        assert!(!health.has(Problem::LogUnwritable));
        let text = String::from_utf8(disk.text.lock().unwrap().clone()).unwrap();
        assert!(text.contains("first line"), "{text}");
        // The line cut half-way is ended before the notice, and the notice counts what was lost.
        assert!(text.contains("\n[cloudci] 3 log lines could not be written\n"), "{text}");
        assert!(text.trim_end().ends_with("space is back"), "{text}");
    }
}
