//! A build's status, as the build store, the API and the CLI's summary spell it.

use std::fmt;

use cloudci_gitlab::types::Status;
use serde::{Deserialize, Serialize};

/// Where a build stands. Serialised as the lower-case names the API has always used.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BuildStatus {
    /// Recorded, no pipeline yet.
    Queued,
    /// Its pipeline runs, or cloudci is still carrying out what follows it.
    Running,
    /// The pipeline passed (and what follows success was done).
    Success,
    /// The pipeline failed.
    Failed,
    /// The pipeline was canceled.
    Canceled,
    /// Not started because a dependency did not succeed (or GitLab skipped the pipeline).
    Skipped,
    /// The pipeline waits for a person to start a manual job.
    Manual,
    /// The pipeline waits for a scheduled job's clock.
    Scheduled,
    /// GitLab refused something, or cloudci could not carry on.
    Error,
}

impl BuildStatus {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Error => "error",
        }
    }

    /// Nothing more happens to the build unless someone retries it.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Running)
    }

    /// The build's status for a pipeline's: settled ones map one to one, anything else is running.
    pub fn from_pipeline(status: &Status) -> Self {
        match status {
            Status::Success => Self::Success,
            Status::Failed => Self::Failed,
            Status::Canceled => Self::Canceled,
            Status::Skipped => Self::Skipped,
            Status::Manual => Self::Manual,
            Status::Scheduled => Self::Scheduled,
            _ => Self::Running,
        }
    }
}

impl fmt::Display for BuildStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_todays_strings() {
        for (s, name) in
            [(BuildStatus::Queued, "queued"), (BuildStatus::Manual, "manual"), (BuildStatus::Error, "error")]
        {
            assert_eq!(serde_json::to_string(&s).unwrap(), format!("\"{name}\""));
            assert_eq!(s.as_str(), name);
            assert_eq!(serde_json::from_str::<BuildStatus>(&format!("\"{name}\"")).unwrap(), s);
        }
        assert_eq!(BuildStatus::from_pipeline(&Status::Canceling), BuildStatus::Running);
        assert!(BuildStatus::Skipped.is_final() && !BuildStatus::Queued.is_final());
    }
}
