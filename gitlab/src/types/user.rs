use serde::{Deserialize, Serialize};

use super::Extra;
use crate::UserId;

/// A user, as embedded in pipelines and jobs (`{id, username, name, state, avatar_url, web_url}`)
/// or returned whole by `GET /user`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    /// The user's id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// Display name.
    pub name: String,
    /// `active`, `blocked`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<String>,
    /// Profile page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub web_url: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// A project or group member (`GET /projects/:id/members/all/:user_id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Member {
    /// The user's id.
    pub id: UserId,
    /// Login name.
    pub username: String,
    /// GitLab's access level: 10 Guest, 15 Planner, 20 Reporter, 30 Developer, 40 Maintainer,
    /// 50 Owner.
    pub access_level: u32,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

impl Member {
    /// GitLab's Reporter level, the least that may read a private project's pipelines.
    pub const REPORTER: u32 = 20;
}
