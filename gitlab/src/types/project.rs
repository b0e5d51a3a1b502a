use serde::{Deserialize, Serialize};

use super::Extra;
use crate::ProjectId;

/// A project (`GET /projects/:id`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Project {
    /// Numeric id.
    pub id: ProjectId,
    /// Display name.
    pub name: String,
    /// Last path component.
    pub path: String,
    /// Full path, e.g. `acme/firmware`.
    pub path_with_namespace: String,
    /// The default branch; `null` for an empty repository.
    pub default_branch: Option<String>,
    /// The project's page.
    pub web_url: String,
    /// Clone URL over HTTP(S).
    #[serde(default)]
    pub http_url_to_repo: Option<String>,
    /// Everything else GitLab sent.
    #[serde(flatten)]
    pub extra: Extra,
}

/// The server's version (`GET /version`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Version {
    /// E.g. `17.1.0-pre`.
    pub version: String,
    /// Git revision of the build.
    pub revision: String,
    /// Everything else GitLab sent (`kas`, `enterprise`).
    #[serde(flatten)]
    pub extra: Extra,
}
