use super::{project_path, segment};
use crate::client::Request;
use crate::types::{Branch, Member, Project, User, Version};
use crate::{Error, Gitlab, ProjectRef, UserId};

impl Gitlab {
    /// `GET /projects/:id`
    ///
    /// ```no_run
    /// # async fn f(gitlab: cloudci_gitlab::Gitlab) -> Result<(), cloudci_gitlab::Error> {
    /// let project = gitlab.project("acme/firmware").await?;
    /// println!("{} ({})", project.path_with_namespace, project.id);
    /// # Ok(()) }
    /// ```
    pub async fn project(&self, project: impl Into<ProjectRef>) -> Result<Project, Error> {
        self.json(&Request::get(project_path(&project.into()))).await
    }

    /// `GET /user`: who the token belongs to.
    pub async fn current_user(&self) -> Result<User, Error> {
        self.json(&Request::get("user")).await
    }

    /// `GET /projects/:id/members/all/:user_id`: the user's membership of the project, direct or
    /// inherited from its groups (the highest level). [`Error::NotFound`] when they are not a
    /// member (or the caller may not see the project).
    pub async fn project_member_all(&self, project: impl Into<ProjectRef>, user: UserId) -> Result<Member, Error> {
        self.json(&Request::get(format!("{}/members/all/{}", project_path(&project.into()), user.0))).await
    }

    /// `GET /version`
    pub async fn version(&self) -> Result<Version, Error> {
        self.json(&Request::get("version")).await
    }

    /// `GET /projects/:id/repository/branches/:branch`: a branch and its head commit.
    pub async fn branch(&self, project: impl Into<ProjectRef>, branch: &str) -> Result<Branch, Error> {
        let path = format!("{}/repository/branches/{}", project_path(&project.into()), segment(branch));
        self.json(&Request::get(path)).await
    }
}
