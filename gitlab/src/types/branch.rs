use serde::{Deserialize, Serialize};

use super::{Extra, Timestamp};

/// A repository branch (`GET /projects/:id/repository/branches/:branch`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    /// Branch name.
    pub name: String,
    /// The head commit.
    pub commit: BranchCommit,
    /// Whether it is protected.
    #[serde(default)]
    pub protected: bool,
    /// Whether it is the default branch.
    #[serde(default)]
    pub default: bool,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A branch's head commit.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BranchCommit {
    /// Full SHA.
    pub id: String,
    /// Abbreviated SHA.
    pub short_id: String,
    /// First line of the message.
    pub title: String,
    /// When it was committed.
    pub committed_date: Option<Timestamp>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}
