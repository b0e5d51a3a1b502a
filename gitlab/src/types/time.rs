//! GitLab timestamps, which come in several textual forms.

use std::fmt;

use chrono::{DateTime, FixedOffset, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A point in time as GitLab wrote it.
///
/// GitLab uses ISO 8601 in the REST API (`2022-09-21T01:05:07.200Z`, `2015-12-24T16:51:14.000+01:00`)
/// and older forms in webhooks (`2016-08-12 15:23:28 UTC`, `2021-04-28 21:50:00 +0200`). All parse;
/// the original text is kept so that serializing gives back exactly what GitLab sent.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Timestamp {
    at: DateTime<Utc>,
    raw: String,
}

/// The text was not a timestamp in any form GitLab uses.
#[derive(Debug, thiserror::Error)]
#[error("not a GitLab timestamp: {0:?}")]
pub struct TimestampError(String);

impl Timestamp {
    /// Parses any of GitLab's forms.
    pub fn parse(raw: &str) -> Result<Self, TimestampError> {
        let at = DateTime::parse_from_rfc3339(raw)
            .map(|t| t.with_timezone(&Utc))
            .or_else(|_| NaiveDateTime::parse_from_str(raw, "%Y-%m-%d %H:%M:%S UTC").map(|n| n.and_utc()))
            .or_else(|_| {
                DateTime::<FixedOffset>::parse_from_str(raw, "%Y-%m-%d %H:%M:%S %z").map(|t| t.with_timezone(&Utc))
            })
            // Some fields (the hook API's `created_at`) omit fractional seconds and use `Z`; rfc3339
            // covers those. A date alone (`2020-04-03`) is midnight UTC.
            .or_else(|_| {
                chrono::NaiveDate::parse_from_str(raw, "%Y-%m-%d")
                    .map(|d| d.and_hms_opt(0, 0, 0).unwrap_or_default().and_utc())
            })
            .map_err(|_| TimestampError(raw.to_owned()))?;
        Ok(Self { at, raw: raw.to_owned() })
    }

    /// ISO 8601 with milliseconds and `Z`, as the REST API writes it.
    pub fn iso(at: DateTime<Utc>) -> Self {
        Self { at, raw: at.to_rfc3339_opts(SecondsFormat::Millis, true) }
    }

    /// ISO 8601 to the second with `Z`, as the webhooks' `*_iso` fields write it.
    pub fn iso_seconds(at: DateTime<Utc>) -> Self {
        Self { at, raw: at.to_rfc3339_opts(SecondsFormat::Secs, true) }
    }

    /// `2016-08-12 15:23:28 UTC`, as pipeline and merge request webhooks write it.
    pub fn hook(at: DateTime<Utc>) -> Self {
        Self { at, raw: at.format("%Y-%m-%d %H:%M:%S UTC").to_string() }
    }

    /// The instant.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// The text GitLab sent.
    pub fn as_str(&self) -> &str {
        &self.raw
    }
}

impl fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.raw)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

impl PartialOrd for Timestamp {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Timestamp {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        self.at.cmp(&other.at).then_with(|| self.raw.cmp(&other.raw))
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.raw)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        Self::parse(&raw).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_form_gitlab_uses_parses_to_the_same_instant() {
        let forms = [
            "2016-08-12T15:23:28Z",
            "2016-08-12T15:23:28.000Z",
            "2016-08-12 15:23:28 UTC",
            "2016-08-12T17:23:28+02:00",
            "2016-08-12 17:23:28 +0200",
            "2016-08-12T17:23:28.000+02:00",
        ];
        let first = Timestamp::parse(forms[0]).unwrap().at();
        for f in forms {
            let t = Timestamp::parse(f).unwrap();
            assert_eq!(t.at(), first, "{f}");
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{f}\""));
        }
        assert!(Timestamp::parse("yesterday").is_err());
    }

    #[test]
    fn constructors_write_gitlabs_forms() {
        let at = Timestamp::parse("2021-02-23T02:41:37.886Z").unwrap().at();
        assert_eq!(Timestamp::iso(at).as_str(), "2021-02-23T02:41:37.886Z");
        assert_eq!(Timestamp::iso_seconds(at).as_str(), "2021-02-23T02:41:37Z");
        assert_eq!(Timestamp::hook(at).as_str(), "2021-02-23 02:41:37 UTC");
    }
}
