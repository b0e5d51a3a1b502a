use std::path::Path;

use super::project_path;
use crate::client::Request;
use crate::{Error, Gitlab, ProjectRef};

/// Archive formats GitLab offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ArchiveFormat {
    /// `.tar.gz` (GitLab's default).
    #[default]
    TarGz,
    /// `.zip`
    Zip,
    /// `.tar`
    Tar,
}

impl ArchiveFormat {
    /// The suffix GitLab's path takes.
    pub fn extension(self) -> &'static str {
        match self {
            Self::TarGz => "tar.gz",
            Self::Zip => "zip",
            Self::Tar => "tar",
        }
    }
}

impl Gitlab {
    /// `GET /projects/:id/repository/archive.<format>?sha=<sha>`: streams the source at a commit
    /// into `dest`. Returns the size.
    pub async fn download_archive(
        &self,
        project: impl Into<ProjectRef>,
        sha: &str,
        format: ArchiveFormat,
        dest: &Path,
    ) -> Result<u64, Error> {
        let req = Request::get(format!("{}/repository/archive.{}", project_path(&project.into()), format.extension()))
            .query("sha", sha)
            .streaming();
        self.download(&req, dest, |_, _| {}).await
    }
}
