use super::project_path;
use crate::client::Request;
use crate::types::{CiLint, CiLintResult};
use crate::{Error, Gitlab, ProjectRef};

impl Gitlab {
    /// `POST /projects/:id/ci/lint`: checks a CI/CD configuration in the project's context
    /// (`include:local` from its files), statically or, with `dry_run`, by simulating a pipeline
    /// for `ref`.
    ///
    /// Lint changes nothing, so repeating it is harmless; but the client's `Request` has no way to
    /// mark a POST idempotent, so it is retried only as other POSTs are (after a 429 or a
    /// connection that never opened).
    ///
    /// ```no_run
    /// # async fn f(gitlab: cloudci_gitlab::Gitlab) -> Result<(), cloudci_gitlab::Error> {
    /// use cloudci_gitlab::types::CiLint;
    /// let yaml = std::fs::read_to_string(".gitlab-ci.yml").unwrap_or_default();
    /// let result = gitlab.ci_lint("acme/firmware", &CiLint::dry_run(yaml, "main")).await?;
    /// for job in result.jobs.unwrap_or_default() {
    ///     println!("{} ({})", job.name, job.stage);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn ci_lint(&self, project: impl Into<ProjectRef>, params: &CiLint) -> Result<CiLintResult, Error> {
        let req = Request::post(format!("{}/ci/lint", project_path(&project.into()))).json(params)?;
        self.json(&req).await
    }
}
