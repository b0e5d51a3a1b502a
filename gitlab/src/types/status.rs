//! Pipeline and job statuses: the 13 GitLab has, and any newer one kept as text.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A pipeline's or job's status (`AVAILABLE_STATUSES` in GitLab's `Ci::HasStatus`).
///
/// A status this version does not know is kept as [`Status::Unknown`] and treated as
/// non-terminal, so a newer GitLab never breaks decoding.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Status {
    /// Created, not yet queued.
    Created,
    /// Waiting for a resource group.
    WaitingForResource,
    /// Runner is preparing the environment.
    Preparing,
    /// Waiting for an external callback (newer GitLab only).
    WaitingForCallback,
    /// Queued for a runner.
    Pending,
    /// Running on a runner.
    Running,
    /// Finished successfully.
    Success,
    /// Finished with a failure.
    Failed,
    /// Being canceled; transient (newer GitLab only).
    Canceling,
    /// Canceled.
    Canceled,
    /// Skipped.
    Skipped,
    /// Waiting for someone to start it by hand; can stay so indefinitely.
    Manual,
    /// Scheduled for a delayed start.
    Scheduled,
    /// A status GitLab added after this code was written.
    Unknown(String),
}

impl Status {
    /// Every status GitLab documents, in lifecycle order.
    pub const ALL: [Status; 13] = [
        Status::Created,
        Status::WaitingForResource,
        Status::Preparing,
        Status::WaitingForCallback,
        Status::Pending,
        Status::Running,
        Status::Success,
        Status::Failed,
        Status::Canceling,
        Status::Canceled,
        Status::Skipped,
        Status::Manual,
        Status::Scheduled,
    ];

    /// GitLab's wire name.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Created => "created",
            Self::WaitingForResource => "waiting_for_resource",
            Self::Preparing => "preparing",
            Self::WaitingForCallback => "waiting_for_callback",
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Success => "success",
            Self::Failed => "failed",
            Self::Canceling => "canceling",
            Self::Canceled => "canceled",
            Self::Skipped => "skipped",
            Self::Manual => "manual",
            Self::Scheduled => "scheduled",
            Self::Unknown(s) => s,
        }
    }

    /// Parses a wire name; never fails (unknown names become [`Status::Unknown`]).
    pub fn parse(s: &str) -> Self {
        Self::ALL.iter().find(|st| st.as_str() == s).cloned().unwrap_or_else(|| Self::Unknown(s.to_owned()))
    }

    /// GitLab's "completed" group: success, failed, canceled, skipped. Nothing follows these unless
    /// someone retries.
    pub fn is_completed(&self) -> bool {
        matches!(self, Self::Success | Self::Failed | Self::Canceled | Self::Skipped)
    }

    /// GitLab's "blocked" group: manual and scheduled wait on a person or a clock.
    pub fn is_blocked(&self) -> bool {
        matches!(self, Self::Manual | Self::Scheduled)
    }

    /// GitLab's "active" group: queued or running somewhere.
    pub fn is_active(&self) -> bool {
        matches!(
            self,
            Self::WaitingForResource
                | Self::Preparing
                | Self::WaitingForCallback
                | Self::Pending
                | Self::Running
                | Self::Canceling
        )
    }

    /// How far along the lifecycle a status is: 0 not started, 1 queued, 2 running, 3 finishing,
    /// 4 completed. A status never legitimately moves to a lower rank without a retry, so a
    /// delivery carrying a lower rank than what is known is late. Blocked and unknown statuses rank
    /// 1 (they can still start).
    pub fn rank(&self) -> u8 {
        match self {
            Self::Created => 0,
            Self::WaitingForResource
            | Self::Preparing
            | Self::WaitingForCallback
            | Self::Pending
            | Self::Manual
            | Self::Scheduled
            | Self::Unknown(_) => 1,
            Self::Running => 2,
            Self::Canceling => 3,
            Self::Success | Self::Failed | Self::Canceled | Self::Skipped => 4,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Status {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self::parse(s))
    }
}

impl Serialize for Status {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Ok(Self::parse(&s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_thirteen_round_trip_and_unknown_is_kept() {
        for st in Status::ALL {
            let json = serde_json::to_string(&st).unwrap();
            assert_eq!(serde_json::from_str::<Status>(&json).unwrap(), st);
        }
        let st: Status = serde_json::from_str("\"teleporting\"").unwrap();
        assert_eq!(st, Status::Unknown("teleporting".into()));
        assert!(!st.is_completed());
        assert_eq!(serde_json::to_string(&st).unwrap(), "\"teleporting\"");
    }

    #[test]
    fn groups_match_gitlab() {
        let completed: Vec<_> = Status::ALL.iter().filter(|s| s.is_completed()).collect();
        assert_eq!(completed.len(), 4);
        assert!(Status::Canceling.is_active() && !Status::Canceling.is_completed());
        assert!(Status::Manual.is_blocked() && !Status::Manual.is_completed());
        assert!(Status::Running.rank() > Status::Pending.rank());
        assert!(Status::Success.rank() > Status::Canceling.rank());
    }
}
