//! Identifier newtypes, and [`ProjectRef`] for GitLab's "numeric id or URL-encoded path" convention.

use std::fmt;

use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};
use serde::{Deserialize, Serialize};

macro_rules! id_type {
    ($(#[$meta:meta])* $name:ident) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(pub u64);

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.fmt(f)
            }
        }

        impl From<u64> for $name {
            fn from(id: u64) -> Self {
                Self(id)
            }
        }

        impl std::str::FromStr for $name {
            type Err = std::num::ParseIntError;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                s.parse().map(Self)
            }
        }
    };
}

id_type!(
    /// A project's global numeric id.
    ProjectId
);
id_type!(
    /// A pipeline's global id (not its per-project `iid`).
    PipelineId
);
id_type!(
    /// A job's global id. GitLab's webhooks call jobs "builds": `build_id` is this id.
    JobId
);
id_type!(
    /// A merge request's per-project `iid`, which is what GitLab's URLs use.
    MergeRequestIid
);
id_type!(
    /// A project hook's id.
    HookId
);
id_type!(
    /// A user's id.
    UserId
);

/// A project named by numeric id or by its full path (`group/subgroup/project`).
///
/// `Display` writes the form GitLab's URLs take: the id, or the path with every `/` (and anything
/// else outside `[A-Za-z0-9._~-]`) percent-encoded, e.g. `acme/fw/sub` → `acme%2Ffw%2Fsub`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ProjectRef {
    /// The numeric id.
    Id(ProjectId),
    /// The full path with namespace, unencoded.
    Path(String),
}

/// Characters kept as they are in a path segment: RFC 3986 unreserved ones.
const SEGMENT: &AsciiSet = &NON_ALPHANUMERIC.remove(b'-').remove(b'.').remove(b'_').remove(b'~');

/// Percent-encodes one URL path segment (a project path, a branch name, a file path), so that a `/`
/// inside it stays part of the segment, as GitLab requires.
pub fn encode_segment(raw: &str) -> String {
    utf8_percent_encode(raw, SEGMENT).to_string()
}

impl ProjectRef {
    /// Parses what a user typed: all digits is an id, anything else a path. Leading and trailing
    /// slashes are dropped (`/acme/fw/` is `acme/fw`).
    pub fn parse(s: &str) -> Self {
        if !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && let Ok(id) = s.parse()
        {
            return Self::Id(ProjectId(id));
        }
        Self::Path(s.trim_matches('/').to_owned())
    }
}

impl fmt::Display for ProjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Id(id) => id.fmt(f),
            Self::Path(path) => f.write_str(&encode_segment(path)),
        }
    }
}

impl From<ProjectId> for ProjectRef {
    fn from(id: ProjectId) -> Self {
        Self::Id(id)
    }
}

impl From<u64> for ProjectRef {
    fn from(id: u64) -> Self {
        Self::Id(ProjectId(id))
    }
}

impl From<&str> for ProjectRef {
    fn from(s: &str) -> Self {
        Self::parse(s)
    }
}

impl From<String> for ProjectRef {
    fn from(s: String) -> Self {
        Self::parse(&s)
    }
}

impl From<&ProjectRef> for ProjectRef {
    fn from(p: &ProjectRef) -> Self {
        p.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_are_encoded_as_one_segment() {
        assert_eq!(ProjectRef::from("acme/fw/sub").to_string(), "acme%2Ffw%2Fsub");
        assert_eq!(ProjectRef::from("a.b-c_d~e").to_string(), "a.b-c_d~e");
        assert_eq!(ProjectRef::from("grp/my proj+x").to_string(), "grp%2Fmy%20proj%2Bx");
        assert_eq!(ProjectRef::from("/acme/fw/").to_string(), "acme%2Ffw");
    }

    #[test]
    fn digits_are_an_id() {
        assert_eq!(ProjectRef::from("42"), ProjectRef::Id(ProjectId(42)));
        assert_eq!(ProjectRef::from("42a"), ProjectRef::Path("42a".into()));
        assert_eq!(ProjectRef::from(7u64).to_string(), "7");
    }
}
