//! Rendering for the terminal: aligned tables for people, JSON for programs.

use std::io::{self, IsTerminal, Write};

use std::collections::BTreeMap;
use std::sync::Mutex;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use crate::orchestrator::{BuildStatus, Reporter};

/// `println!` that does not panic when stdout is a closed pipe (`cloudci ... | head`).
#[macro_export]
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json(value: &impl Serialize) -> io::Result<()> {
    let mut out = io::stdout().lock();
    serde_json::to_writer_pretty(&mut out, value).map_err(io::Error::other)?;
    writeln!(out)
}

/// A plain text table: a header row and aligned columns, two spaces apart.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
}

impl Table {
    /// A table with these column titles.
    pub fn new(header: &[&str]) -> Self {
        Self { rows: vec![header.iter().map(|h| (*h).to_owned()).collect()] }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// The table as text, one line per row.
    pub fn render(&self) -> String {
        let columns = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let widths: Vec<usize> = (0..columns)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut text = String::new();
        for row in &self.rows {
            let mut line = String::new();
            for (c, cell) in row.iter().enumerate() {
                if c + 1 == row.len() {
                    line.push_str(cell);
                } else {
                    line.push_str(&format!("{cell:<width$}  ", width = widths[c]));
                }
            }
            text.push_str(line.trim_end());
            text.push('\n');
        }
        text
    }

    /// Prints the table on stdout.
    pub fn print(&self) -> io::Result<()> {
        io::stdout().lock().write_all(self.render().as_bytes())
    }
}

/// Progress on a terminal: one live line per build (its state and running job), a bar per
/// download, and the progress lines printed above them. Drawn only when stderr is a terminal
/// (indicatif draws nothing otherwise); the CLI does not use it with `--json`.
pub struct TerminalProgress {
    multi: MultiProgress,
    builds: Mutex<BTreeMap<String, ProgressBar>>,
    downloads: Mutex<BTreeMap<(String, String), ProgressBar>>,
}

impl std::fmt::Debug for TerminalProgress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TerminalProgress").finish_non_exhaustive()
    }
}

impl Default for TerminalProgress {
    fn default() -> Self {
        Self {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            builds: Mutex::default(),
            downloads: Mutex::default(),
        }
    }
}

/// The text of a build's live line.
pub fn build_line(status: BuildStatus, job: Option<&str>) -> String {
    match job {
        Some(job) => format!("{status} · {job}"),
        None => status.to_string(),
    }
}

impl Reporter for TerminalProgress {
    fn line(&self, build: &str, text: &str) {
        // Above the live lines; when nothing is drawn (not a terminal) it prints nothing either.
        let _ = self.multi.println(format!("[{build}] {text}"));
    }

    fn state(&self, build: &str, status: BuildStatus, job: Option<&str>) {
        let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
        let bar = builds.entry(build.to_owned()).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(
                ProgressStyle::with_template("{spinner} {prefix:.bold} {msg} ({elapsed})")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.set_prefix(build.to_owned());
            bar.enable_steady_tick(std::time::Duration::from_millis(120));
            bar
        });
        if bar.is_finished() {
            return;
        }
        bar.set_message(build_line(status, job));
        if status.is_final() {
            bar.finish();
        }
    }

    fn download(&self, build: &str, what: &str, done: u64, total: Option<u64>) {
        let mut downloads = self.downloads.lock().unwrap_or_else(|e| e.into_inner());
        let bar = downloads.entry((build.to_owned(), what.to_owned())).or_insert_with(|| {
            let bar = self.multi.add(ProgressBar::new(total.unwrap_or(0)));
            bar.set_style(
                ProgressStyle::with_template("  {prefix} {wide_bar} {bytes}/{total_bytes} {bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_prefix(format!("{build} {what}"));
            bar
        });
        if let Some(total) = total {
            bar.set_length(total.max(done));
        }
        bar.set_position(done);
        if total.is_some_and(|t| done >= t) {
            bar.finish_and_clear();
        }
    }
}

/// Whether progress may be drawn on stderr: only for a terminal.
pub fn stderr_is_terminal() -> bool {
    io::stderr().is_terminal()
}

#[cfg(test)]
mod tests {
    use super::{BuildStatus, Reporter, Table, TerminalProgress, build_line};

    #[test]
    fn a_build_line_says_its_state_and_running_job() {
        assert_eq!(build_line(BuildStatus::Running, Some("build")), "running · build");
        assert_eq!(build_line(BuildStatus::Queued, None), "queued");
        // Not a terminal here: every call is accepted and nothing is drawn.
        let p = TerminalProgress::default();
        p.state("fw/t1", BuildStatus::Running, Some("build"));
        p.download("fw/t1", "build", 10, Some(20));
        p.download("fw/t1", "build", 20, Some(20));
        p.state("fw/t1", BuildStatus::Success, None);
        p.line("fw/t1", "done");
    }

    #[test]
    fn columns_align() {
        let mut t = Table::new(&["ID", "STATUS", "REF"]);
        t.row(vec!["7".into(), "success".into(), "main".into()]);
        t.row(vec!["1234".into(), "failed".into(), "feature/x".into()]);
        assert_eq!(t.render(), "ID    STATUS   REF\n7     success  main\n1234  failed   feature/x\n");
    }
}
