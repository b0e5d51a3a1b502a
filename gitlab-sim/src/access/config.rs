//! The users, memberships and visibilities a sim starts with, and how they are checked.

use chrono::{DateTime, Utc};

use super::{Directory, Membership, Source, User, level, parse_level};

/// A user to declare: `NAME=TOKEN` on the command line.
#[derive(Clone, PartialEq, Eq)]
pub struct SimUser {
    /// Username (letters, digits, `_`, `-`, `.`).
    pub username: String,
    /// Their personal access token.
    pub token: String,
}

impl std::fmt::Debug for SimUser {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimUser").field("username", &self.username).field("token", &"[REDACTED]").finish()
    }
}

impl std::str::FromStr for SimUser {
    type Err = AccessError;

    fn from_str(raw: &str) -> Result<Self, AccessError> {
        let (username, token) = raw.split_once('=').ok_or(AccessError::UserSpec)?;
        let ok_name =
            !username.is_empty() && username.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok_name || token.is_empty() {
            return Err(AccessError::UserSpec);
        }
        Ok(Self { username: username.to_owned(), token: token.to_owned() })
    }
}

/// A membership to declare: `PATH=USER:ROLE`, where PATH is a project (`acme/firmware`) or a
/// group (`acme`), and ROLE a name (`developer`) or a number (`30`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimMember {
    /// Project or group path.
    pub source: String,
    /// Username.
    pub username: String,
    /// Access level.
    pub access_level: u8,
}

impl std::str::FromStr for SimMember {
    type Err = AccessError;

    fn from_str(raw: &str) -> Result<Self, AccessError> {
        let spec = || AccessError::MemberSpec(raw.to_owned());
        let (source, rest) = raw.split_once('=').ok_or_else(spec)?;
        let (username, role) = rest.split_once(':').ok_or_else(spec)?;
        let access_level = parse_level(role).ok_or_else(spec)?;
        if source.trim_matches('/').is_empty() || username.is_empty() {
            return Err(spec());
        }
        Ok(Self { source: source.trim_matches('/').to_owned(), username: username.to_owned(), access_level })
    }
}

/// Why the declared users, members or visibilities cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    /// A user is not `NAME=TOKEN`.
    #[error("a user must be NAME=TOKEN (NAME of letters, digits, _ - .; a non-empty token)")]
    UserSpec,
    /// A membership is not `PATH=USER:ROLE`.
    #[error(
        "member {0:?}: expected PATH=USER:ROLE (ROLE guest, planner, reporter, developer, maintainer, owner or 10-50)"
    )]
    MemberSpec(String),
    /// Two users with one name, or a user named like the administrator.
    #[error("user {0:?} is declared twice (root is the administrator)")]
    DuplicateUser(String),
    /// A token that is empty or used twice.
    #[error("user {0:?}: every user needs a token of their own")]
    SharedToken(String),
    /// A membership of someone undeclared.
    #[error("member of {path:?}: no user {username:?}")]
    UnknownUser {
        /// The project or group.
        path: String,
        /// The username.
        username: String,
    },
    /// A path that is neither a project nor a group.
    #[error("{0:?} is neither a project nor a group of the sim")]
    UnknownPath(String),
    /// The same membership twice.
    #[error("{username:?} is declared twice as a member of {path:?}")]
    DuplicateMember {
        /// The project or group.
        path: String,
        /// The username.
        username: String,
    },
}

/// Fills the directory from a sim's configuration: the administrator (`root`, id 1, Owner of
/// every top-level group, as the user who created them), the declared users, memberships and
/// visibilities. The groups already exist (made from the projects' paths).
pub(crate) fn populate(
    d: &mut Directory,
    projects: &mut [crate::state::Project],
    config: &crate::SimConfig,
    now: DateTime<Utc>,
) -> Result<(), AccessError> {
    d.users.push(User {
        id: 1,
        username: "root".into(),
        name: "Administrator".into(),
        token: config.token.clone(),
        admin: true,
        created_at: now,
    });
    for u in &config.users {
        if d.user_by_name(&u.username).is_some() {
            return Err(AccessError::DuplicateUser(u.username.clone()));
        }
        if u.token.is_empty() || d.users.iter().any(|x| x.token == u.token) {
            return Err(AccessError::SharedToken(u.username.clone()));
        }
        let id = d.users.len() as u64 + 1;
        d.users.push(User {
            id,
            username: u.username.clone(),
            name: u.username.clone(),
            token: u.token.clone(),
            admin: false,
            created_at: now,
        });
    }
    let owner = Membership { access_level: level::OWNER, created_at: now, created_by: None, expires_at: None };
    let tops: Vec<u64> = d.groups.iter().filter(|g| g.parent.is_none()).map(|g| g.id).collect();
    for g in tops {
        d.members.insert((Source::Group(g), 1), owner.clone());
    }
    for m in &config.members {
        let source = source_of(d, projects, &m.source)?;
        let user = d
            .user_by_name(&m.username)
            .map(|u| u.id)
            .ok_or_else(|| AccessError::UnknownUser { path: m.source.clone(), username: m.username.clone() })?;
        let grant = Membership { access_level: m.access_level, created_at: now, created_by: None, expires_at: None };
        if d.members.insert((source, user), grant).is_some() && user != 1 {
            return Err(AccessError::DuplicateMember { path: m.source.clone(), username: m.username.clone() });
        }
    }
    for (path, visibility) in &config.visibility {
        match source_of(d, projects, path.trim_matches('/'))? {
            Source::Project(id) => {
                if let Some(p) = projects.iter_mut().find(|p| p.id == id) {
                    p.visibility = *visibility;
                }
            }
            Source::Group(id) => {
                if let Some(g) = d.groups.iter_mut().find(|g| g.id == id) {
                    g.visibility = *visibility;
                }
            }
        }
    }
    Ok(())
}

fn source_of(d: &Directory, projects: &[crate::state::Project], path: &str) -> Result<Source, AccessError> {
    if let Some(p) = projects.iter().find(|p| p.path == path) {
        return Ok(Source::Project(p.id));
    }
    d.groups.iter().find(|g| g.path == path).map(|g| Source::Group(g.id)).ok_or(AccessError::UnknownPath(path.into()))
}
