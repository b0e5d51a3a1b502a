//! The permission rules: what each role may do on a project or group (sources in `mod.rs`).

use super::{Visibility, level};

/// What a request wants to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ability {
    /// See the project.
    ReadProject,
    /// Read the repository (branches, archives).
    DownloadCode,
    /// See pipelines, jobs, logs and artifacts.
    ReadPipeline,
    /// See a pipeline's variables (Developer: inferred, not confirmed).
    ReadPipelineVariables,
    /// Create pipelines (and lint with the project's context).
    CreatePipeline,
    /// Retry, cancel or play; `protected` when the pipeline runs for a protected branch.
    UpdatePipeline {
        /// The ref is protected.
        protected: bool,
    },
    /// See merge requests.
    ReadMergeRequest,
    /// Open merge requests.
    CreateMergeRequest,
    /// Merge (or set and cancel auto-merge) into a branch.
    Merge {
        /// The target branch is protected.
        protected: bool,
    },
    /// Project settings, hooks, members.
    AdminProject,
    /// Change visibility.
    OwnProject,
    /// See the group.
    ReadGroup,
    /// Group hooks and members.
    AdminGroup,
}

/// Why a request is refused, with GitLab's status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Denied {
    /// Hidden: GitLab answers 404 for what the user may not see.
    NotFound,
    /// Seen but not allowed: 403.
    Forbidden,
    /// The merge endpoint's refusal: 401 (FACTS §3.4).
    Unauthorized,
}

/// What the permission rules need to know about a project.
#[derive(Debug, Clone, Copy)]
pub struct ProjectFacts {
    /// Visibility.
    pub visibility: Visibility,
    /// "Public pipelines" (`public_jobs`, on by default).
    pub public_jobs: bool,
}

/// Whether a user with `level` in the project (none: not a member) may do `ability`.
pub fn check_project(facts: ProjectFacts, admin: bool, level: Option<u8>, ability: Ability) -> Result<(), Denied> {
    if admin {
        return Ok(());
    }
    let visible = match facts.visibility {
        // Every API caller is signed in, so internal projects are visible to all of them.
        Visibility::Public | Visibility::Internal => true,
        Visibility::Private => level.is_some(),
    };
    if !visible {
        return Err(Denied::NotFound);
    }
    let at_least = |min: u8| if level.unwrap_or(0) >= min { Ok(()) } else { Err(Denied::Forbidden) };
    match ability {
        Ability::ReadProject => Ok(()),
        Ability::DownloadCode => match facts.visibility {
            Visibility::Private => at_least(level::REPORTER),
            _ => Ok(()),
        },
        Ability::ReadPipeline => {
            let ok = match level {
                Some(l) if l >= level::REPORTER => true,
                Some(_) => facts.public_jobs,
                // The docs: non-members only when the project is public (internal: unconfirmed).
                None => facts.public_jobs && facts.visibility == Visibility::Public,
            };
            if ok { Ok(()) } else { Err(Denied::Forbidden) }
        }
        Ability::ReadPipelineVariables | Ability::CreatePipeline | Ability::CreateMergeRequest => {
            at_least(level::DEVELOPER)
        }
        // The default branch is "fully protected" by default: only Maintainers push or merge,
        // and retrying, canceling or playing there needs the same right.
        Ability::UpdatePipeline { protected } => at_least(if protected { level::MAINTAINER } else { level::DEVELOPER }),
        Ability::ReadMergeRequest => match facts.visibility {
            // Guests may list merge requests of public projects only (permissions.md, note 25).
            Visibility::Private => at_least(level::REPORTER),
            _ => Ok(()),
        },
        Ability::Merge { protected } => {
            let min = if protected { level::MAINTAINER } else { level::DEVELOPER };
            if level.unwrap_or(0) >= min { Ok(()) } else { Err(Denied::Unauthorized) }
        }
        Ability::AdminProject => at_least(level::MAINTAINER),
        Ability::OwnProject => at_least(level::OWNER),
        Ability::ReadGroup | Ability::AdminGroup => Err(Denied::Forbidden),
    }
}

/// Whether a user with `level` in the group may do `ability` there. A private group is hidden
/// from everyone but its members and the members of its projects (`GroupPolicy`'s
/// `has_projects`, as remembered; not re-read for this).
pub fn check_group(
    visibility: Visibility,
    admin: bool,
    level: Option<u8>,
    in_a_project: bool,
    ability: Ability,
) -> Result<(), Denied> {
    if admin {
        return Ok(());
    }
    if visibility == Visibility::Private && level.is_none() && !in_a_project {
        return Err(Denied::NotFound);
    }
    match ability {
        Ability::ReadGroup => Ok(()),
        // Group hooks and group members: the group's Owner (group_webhooks.md: "Administrator or
        // Owner role for the group").
        _ if level.unwrap_or(0) >= level::OWNER => Ok(()),
        _ => Err(Denied::Forbidden),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::access::{Visibility, level};

    const PRIVATE: ProjectFacts = ProjectFacts { visibility: Visibility::Private, public_jobs: true };
    const PUBLIC: ProjectFacts = ProjectFacts { visibility: Visibility::Public, public_jobs: true };

    #[test]
    fn roles_follow_gitlabs_table() {
        use Ability::*;
        assert_eq!(check_project(PRIVATE, false, None, ReadProject), Err(Denied::NotFound));
        assert_eq!(check_project(PRIVATE, false, None, ReadPipeline), Err(Denied::NotFound));
        assert_eq!(check_project(PRIVATE, true, None, AdminProject), Ok(()));
        assert_eq!(check_project(PRIVATE, false, Some(level::GUEST), ReadPipeline), Ok(()));
        let no_public_jobs = ProjectFacts { public_jobs: false, ..PRIVATE };
        assert_eq!(check_project(no_public_jobs, false, Some(level::GUEST), ReadPipeline), Err(Denied::Forbidden));
        assert_eq!(check_project(PRIVATE, false, Some(level::GUEST), DownloadCode), Err(Denied::Forbidden));
        assert_eq!(check_project(PRIVATE, false, Some(level::REPORTER), CreatePipeline), Err(Denied::Forbidden));
        assert_eq!(check_project(PRIVATE, false, Some(level::DEVELOPER), CreatePipeline), Ok(()));
        let protected = UpdatePipeline { protected: true };
        assert_eq!(check_project(PRIVATE, false, Some(level::DEVELOPER), protected), Err(Denied::Forbidden));
        assert_eq!(check_project(PRIVATE, false, Some(level::MAINTAINER), protected), Ok(()));
        assert_eq!(
            check_project(PRIVATE, false, Some(level::DEVELOPER), Merge { protected: true }),
            Err(Denied::Unauthorized)
        );
        assert_eq!(check_project(PRIVATE, false, Some(level::DEVELOPER), AdminProject), Err(Denied::Forbidden));
        assert_eq!(check_project(PUBLIC, false, None, ReadPipeline), Ok(()));
        assert_eq!(check_project(PUBLIC, false, None, CreatePipeline), Err(Denied::Forbidden));
        let internal = ProjectFacts { visibility: Visibility::Internal, public_jobs: true };
        assert_eq!(check_project(internal, false, None, ReadProject), Ok(()));
        assert_eq!(check_project(internal, false, None, ReadPipeline), Err(Denied::Forbidden));
    }
}
