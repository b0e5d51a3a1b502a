//! Targets a runner could not build, told apart from builds that passed.
//!
//! GitLab knows only a job's exit status. The convention cloudci reads (any repository can use
//! it): a job that cannot run where it landed — its toolchain or emulator is not installed —
//! prints a line `cloudci: skipped: <reason>` and exits [`SKIP_EXIT_CODE`] (77, automake's SKIP),
//! and the job has `allow_failure: exit_codes: [77]`. GitLab shows an allowed failure and the
//! pipeline passes; cloudci reports the target as [`BuildStatus::Skipped`] with that reason,
//! never as a success. A failed pipeline stays failed, and an allowed failure without the line
//! is GitLab's "passed with warnings", so a success.

use cloudci_gitlab::types::Status;

use super::BuildStatus;
use crate::builds::BuildRecord;

/// What a skipping job prints, at the start of a line, before its reason.
pub const MARKER: &str = "cloudci: skipped:";

/// The exit code a skipping job ends with (automake's SKIP), for `allow_failure: exit_codes`.
pub const SKIP_EXIT_CODE: i32 = 77;

/// The reason a job's log gives for skipping: the text after [`MARKER`] on the last line that
/// starts with it (colours and carriage returns removed). The runner's echo of the command that
/// printed it starts with `$ `, so it is not taken for the line itself.
pub fn reason_in_log(log: &str) -> Option<String> {
    log.lines()
        .filter_map(|line| {
            let line = strip_ansi(line);
            let line = line.rsplit('\r').next().unwrap_or_default().trim_start();
            line.strip_prefix(MARKER).map(|r| r.trim().to_owned())
        })
        .rfind(|r| !r.is_empty())
}

/// Whether a build that ended with `status` was skipped, from its jobs (status and log text):
/// its pipeline passed and a job failed — so was allowed to — with a skip line in its log. The
/// reasons of every such job, each once, in job order.
pub fn decide<'a>(status: BuildStatus, jobs: impl IntoIterator<Item = (&'a Status, &'a str)>) -> Option<String> {
    if status != BuildStatus::Success {
        return None;
    }
    let mut reasons: Vec<String> = Vec::new();
    for (job_status, log) in jobs {
        if *job_status == Status::Failed
            && let Some(reason) = reason_in_log(log)
            && !reasons.contains(&reason)
        {
            reasons.push(reason);
        }
    }
    (!reasons.is_empty()).then(|| reasons.join("; "))
}

/// Marks a settled build `skipped`, with the reason, when [`decide`] says so; the logs are read
/// from the files its jobs were written to. Anything else is left as it is.
pub fn mark(record: &mut BuildRecord) {
    if record.status != BuildStatus::Success {
        return;
    }
    let logs: Vec<(Status, String)> = record
        .jobs
        .values()
        .filter(|j| j.status == Status::Failed)
        .filter_map(|j| Some((j.status.clone(), std::fs::read_to_string(j.log.as_ref()?).ok()?)))
        .collect();
    if let Some(reason) = decide(record.status, logs.iter().map(|(s, l)| (s, l.as_str()))) {
        record.status = BuildStatus::Skipped;
        record.reason = Some(reason);
        // The allowed failure was the skip, said in the reason: not a warning on top.
        record.warnings.clear();
    }
}

/// `line` without ANSI colour sequences (`ESC [ ... letter`).
fn strip_ansi(line: &str) -> std::borrow::Cow<'_, str> {
    if !line.contains('\u{1b}') {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out.into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKIPPED_LOG: &str = "Running with gitlab-runner\n$ sh scripts/skip-unless-installed arm-none-eabi-gcc\n\
        cloudci: skipped: arm-none-eabi-gcc is not installed on this runner\nexit code 77\n";

    #[test]
    fn the_reason_is_the_marked_line_not_the_command_that_printed_it() {
        assert_eq!(reason_in_log(SKIPPED_LOG).as_deref(), Some("arm-none-eabi-gcc is not installed on this runner"));
        let echoed = "$ echo \"cloudci: skipped: no\"\n";
        assert_eq!(reason_in_log(echoed), None);
        assert_eq!(reason_in_log("\u{1b}[0;33mcloudci: skipped: colour\u{1b}[0m\r\n").as_deref(), Some("colour"));
        assert_eq!(reason_in_log("progress\rcloudci: skipped: after a CR\n").as_deref(), Some("after a CR"));
        assert_eq!(reason_in_log("cloudci: skipped:\n"), None, "a marker with no reason says nothing");
        assert_eq!(reason_in_log("cloudci: skipped: a\ncloudci: skipped: b\n").as_deref(), Some("b"));
    }

    #[test]
    fn only_an_allowed_failure_of_a_passed_pipeline_with_the_line_is_a_skip() {
        let (ok, failed) = (Status::Success, Status::Failed);
        let skip = [(&ok, "built"), (&failed, SKIPPED_LOG)];
        assert_eq!(
            decide(BuildStatus::Success, skip).as_deref(),
            Some("arm-none-eabi-gcc is not installed on this runner")
        );
        // A red pipeline stays red, whatever a log says.
        assert_eq!(decide(BuildStatus::Failed, skip), None);
        // Passed with warnings: an allowed failure that gives no reason is not a skip.
        assert_eq!(decide(BuildStatus::Success, [(&failed, "error: boom\nexit code 1\n")]), None);
        // A job that succeeded and merely mentions the marker did not skip.
        assert_eq!(decide(BuildStatus::Success, [(&ok, SKIPPED_LOG)]), None);
        // Two jobs skipped for the same reason say it once; different reasons are both given.
        let qemu = "cloudci: skipped: qemu-system-arm is not installed\n";
        assert_eq!(
            decide(BuildStatus::Success, [(&failed, SKIPPED_LOG), (&failed, SKIPPED_LOG), (&failed, qemu)]).as_deref(),
            Some("arm-none-eabi-gcc is not installed on this runner; qemu-system-arm is not installed")
        );
    }

    #[test]
    fn a_record_is_marked_from_its_log_files() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("build.log");
        std::fs::write(&log, SKIPPED_LOG).unwrap();
        let mut r: BuildRecord = serde_json::from_value(serde_json::json!({
            "id": 1, "run": 1, "project": "firmware", "gitlab": "demo/firmware", "target": "m4",
            "status": "success", "created_at": "2025-01-01T00:00:00Z", "updated_at": "2025-01-01T00:00:00Z",
            "jobs": {
                "build": {"id": 1, "status": "failed", "log": log.display().to_string()},
                "test": {"id": 2, "status": "success", "log": null},
            },
        }))
        .unwrap();
        mark(&mut r);
        assert_eq!(r.status, BuildStatus::Skipped);
        assert_eq!(r.reason.as_deref(), Some("arm-none-eabi-gcc is not installed on this runner"));
        let mut failed = r.clone();
        (failed.status, failed.reason) = (BuildStatus::Failed, None);
        mark(&mut failed);
        assert_eq!((failed.status, failed.reason), (BuildStatus::Failed, None));
    }
}
