//! Who is asking and what they may do: users and their tokens, groups (made from the projects'
//! paths), memberships with GitLab's access levels, project visibility, and the permission rules
//! the API applies to the endpoints cloudci uses.
//!
//! Sources (gitlabhq/gitlabhq, the GitLab mirror FACTS.md uses):
//! - doc/api/members.md @014b8327 and lib/api/members.rb @014b8327: the members endpoints; `.../all`
//!   adds members inherited from ancestor groups, the highest level per user winning; a user who
//!   is not a member is `find_by!`'s `404 Not found`.
//! - doc/user/permissions.md @003efb27, "GitLab CI/CD permissions": who may see pipelines, jobs,
//!   logs and artifacts (Reporter; Guest when "public pipelines" is on; non-members of public
//!   projects likewise), run pipelines, retry and cancel (Developer), manage hooks and members
//!   (Maintainer), change visibility (Owner).
//! - lib/gitlab/ci/pipeline/chain/validate/abilities.rb (commit not resolved): a pipeline on a
//!   protected branch needs the right to push or merge there.
//!
//! Not confirmed, so marked where used: that a non-member of an *internal* project may not see
//! its pipelines (the docs' table says "if the project is public"), and the variables endpoint's
//! role (Developer here).

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};

mod config;
mod rules;

pub(crate) use config::populate;
pub use config::{AccessError, SimMember, SimUser};
pub use rules::{Ability, Denied, ProjectFacts, check_group, check_project};

/// GitLab's roles (`Gitlab::Access`), as `access_level` numbers.
pub mod level {
    /// Guest.
    pub const GUEST: u8 = 10;
    /// Planner (GitLab 17.7+).
    pub const PLANNER: u8 = 15;
    /// Reporter.
    pub const REPORTER: u8 = 20;
    /// Developer.
    pub const DEVELOPER: u8 = 30;
    /// Maintainer.
    pub const MAINTAINER: u8 = 40;
    /// Owner.
    pub const OWNER: u8 = 50;
    /// Every level a membership may have.
    pub const ALL: [u8; 6] = [GUEST, PLANNER, REPORTER, DEVELOPER, MAINTAINER, OWNER];
}

/// An access level from its number (`30`) or role name (`developer`).
pub fn parse_level(raw: &str) -> Option<u8> {
    let by_name = match raw.to_ascii_lowercase().as_str() {
        "guest" => Some(level::GUEST),
        "planner" => Some(level::PLANNER),
        "reporter" => Some(level::REPORTER),
        "developer" => Some(level::DEVELOPER),
        "maintainer" => Some(level::MAINTAINER),
        "owner" => Some(level::OWNER),
        _ => None,
    };
    by_name.or_else(|| raw.parse::<u8>().ok().filter(|l| level::ALL.contains(l)))
}

/// A project's or group's visibility.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Visibility {
    /// Members only (GitLab's default for new projects).
    #[default]
    Private,
    /// Every signed-in user.
    Internal,
    /// Everyone.
    Public,
}

impl Visibility {
    /// The API's `visibility`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Private => "private",
            Self::Internal => "internal",
            Self::Public => "public",
        }
    }

    /// Webhook payloads' `visibility_level` (`Gitlab::VisibilityLevel`: 0, 10, 20).
    pub fn level(self) -> u8 {
        match self {
            Self::Private => 0,
            Self::Internal => 10,
            Self::Public => 20,
        }
    }

    /// From the API's word.
    pub fn parse(raw: &str) -> Option<Self> {
        match raw {
            "private" => Some(Self::Private),
            "internal" => Some(Self::Internal),
            "public" => Some(Self::Public),
            _ => None,
        }
    }
}

/// A user and the one personal access token that authenticates as them.
#[derive(Clone)]
pub struct User {
    /// Id (the administrator is 1, the declared users 2, 3, ... in order).
    pub id: u64,
    /// Login name.
    pub username: String,
    /// Display name.
    pub name: String,
    /// The token (never printed).
    pub token: String,
    /// An administrator may do everything (the `--token` user).
    pub admin: bool,
    /// Creation time (sim start).
    pub created_at: DateTime<Utc>,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("admin", &self.admin)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

/// A group or subgroup.
#[derive(Debug, Clone)]
pub struct Group {
    /// Id (1, 2, ... in the order the projects' paths name them).
    pub id: u64,
    /// Full path (`acme/platform`).
    pub path: String,
    /// The parent group.
    pub parent: Option<u64>,
    /// Visibility.
    pub visibility: Visibility,
    /// Creation time (sim start).
    pub created_at: DateTime<Utc>,
}

impl Group {
    /// Last path component.
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

/// One membership of a user in a project or group.
#[derive(Debug, Clone)]
pub struct Membership {
    /// Access level.
    pub access_level: u8,
    /// When it was granted.
    pub created_at: DateTime<Utc>,
    /// Who granted it through the API (none for memberships declared at start).
    pub created_by: Option<u64>,
    /// `YYYY-MM-DD`, as given; recorded, not enforced.
    pub expires_at: Option<String>,
}

/// A project or a group: where a membership or a hook lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    /// A project, by id.
    Project(u64),
    /// A group, by id.
    Group(u64),
}

/// Users, groups and memberships.
#[derive(Debug, Default)]
pub struct Directory {
    /// Users by id - 1.
    pub users: Vec<User>,
    /// Groups by id - 1.
    pub groups: Vec<Group>,
    /// Direct memberships, by (source, user id).
    pub members: BTreeMap<(Source, u64), Membership>,
}

impl Directory {
    /// The user a token authenticates as (an empty token never does).
    pub fn user_by_token(&self, token: &str) -> Option<&User> {
        if token.is_empty() {
            return None;
        }
        self.users.iter().find(|u| u.token == token)
    }

    /// The user with this id.
    pub fn user(&self, id: u64) -> Option<&User> {
        self.users.iter().find(|u| u.id == id)
    }

    /// The user with this username.
    pub fn user_by_name(&self, username: &str) -> Option<&User> {
        self.users.iter().find(|u| u.username == username)
    }

    /// The group with this id or full path.
    pub fn group(&self, key: &str) -> Option<&Group> {
        match key.parse::<u64>() {
            Ok(id) => self.groups.iter().find(|g| g.id == id),
            Err(_) => self.groups.iter().find(|g| g.path == key.trim_matches('/')),
        }
    }

    /// Creates the groups of a namespace path that do not exist yet; returns the innermost's id.
    pub fn ensure_groups(&mut self, namespace: &str, now: DateTime<Utc>) -> u64 {
        let mut parent = None;
        let mut path = String::new();
        for part in namespace.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(part);
            let id = match self.groups.iter().find(|g| g.path == path) {
                Some(g) => g.id,
                None => {
                    let id = self.groups.len() as u64 + 1;
                    self.groups.push(Group {
                        id,
                        path: path.clone(),
                        parent,
                        visibility: Visibility::Private,
                        created_at: now,
                    });
                    id
                }
            };
            parent = Some(id);
        }
        parent.unwrap_or(0)
    }

    /// The group and its ancestors, innermost first.
    pub fn lineage(&self, group_id: u64) -> Vec<u64> {
        let mut out = Vec::new();
        let mut next = Some(group_id);
        while let Some(id) = next {
            let Some(g) = self.groups.iter().find(|g| g.id == id) else { break };
            if out.contains(&id) {
                break;
            }
            out.push(id);
            next = g.parent;
        }
        out
    }

    /// The top-level group of a group (GitLab's `root_ancestor`).
    pub fn root_of(&self, group_id: u64) -> u64 {
        self.lineage(group_id).last().copied().unwrap_or(group_id)
    }

    /// Whether `group_id` is `ancestor` or lies under it.
    pub fn is_within(&self, group_id: u64, ancestor: u64) -> bool {
        self.lineage(group_id).contains(&ancestor)
    }

    /// Members with their effective membership: direct ones of `source` and those inherited from
    /// the groups above it; when a user has several, the highest level wins (members.md, 13.11+).
    pub fn members_all(&self, source: Source, group_of_project: u64) -> BTreeMap<u64, &Membership> {
        let mut sources = Vec::new();
        match source {
            Source::Project(p) => {
                sources.push(Source::Project(p));
                sources.extend(self.lineage(group_of_project).into_iter().map(Source::Group));
            }
            Source::Group(g) => sources.extend(self.lineage(g).into_iter().map(Source::Group)),
        }
        let mut out: BTreeMap<u64, &Membership> = BTreeMap::new();
        for s in sources {
            for ((_, user), m) in self.members.range((s, 0)..=(s, u64::MAX)) {
                if out.get(user).is_none_or(|have| have.access_level < m.access_level) {
                    out.insert(*user, m);
                }
            }
        }
        out
    }

    /// Direct members of `source`.
    pub fn members_direct(&self, source: Source) -> BTreeMap<u64, &Membership> {
        self.members.range((source, 0)..=(source, u64::MAX)).map(|((_, u), m)| (*u, m)).collect()
    }

    /// A user's effective level in a source, if any.
    pub fn level(&self, source: Source, group_of_project: u64, user: u64) -> Option<u8> {
        self.members_all(source, group_of_project).get(&user).map(|m| m.access_level)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inherited_members_take_the_highest_level() {
        let now = Utc::now();
        let mut d = Directory::default();
        let sub = d.ensure_groups("acme/platform", now);
        let top = d.root_of(sub);
        assert_eq!((top, sub), (1, 2));
        assert_eq!(d.ensure_groups("acme", now), 1);
        let m = |l| Membership { access_level: l, created_at: now, created_by: None, expires_at: None };
        d.members.insert((Source::Group(top), 7), m(level::REPORTER));
        d.members.insert((Source::Project(3), 7), m(level::DEVELOPER));
        d.members.insert((Source::Group(sub), 8), m(level::GUEST));
        d.members.insert((Source::Group(top), 8), m(level::MAINTAINER));
        assert_eq!(d.level(Source::Project(3), sub, 7), Some(level::DEVELOPER));
        assert_eq!(d.level(Source::Project(3), sub, 8), Some(level::MAINTAINER));
        assert_eq!(d.level(Source::Project(4), sub, 7), Some(level::REPORTER));
        assert_eq!(d.level(Source::Project(3), sub, 9), None);
        assert_eq!(d.members_direct(Source::Project(3)).len(), 1);
        assert!(d.is_within(sub, top) && !d.is_within(top, sub));
    }

    #[test]
    fn levels_parse_from_names_and_numbers() {
        assert_eq!(parse_level("Developer"), Some(30));
        assert_eq!(parse_level("40"), Some(40));
        assert_eq!(parse_level("35"), None);
        assert_eq!(parse_level("boss"), None);
    }
}
