//! The record of builds: what was asked, which pipeline ran it, how it ended, where its logs,
//! firmware and merge request are. SQLite by default, behind [`BuildStore`].

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;

use rusqlite::{Connection, OptionalExtension, params};
use serde::{Deserialize, Serialize};

/// A job of a build, as last seen.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// GitLab job id.
    pub id: u64,
    /// Status.
    pub status: String,
    /// The log file on disk, when written.
    pub log: Option<String>,
}

/// One build: a project × target in one run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRecord {
    /// cloudci's build id.
    pub id: i64,
    /// The run it belongs to.
    pub run: i64,
    /// Project name in the configuration.
    pub project: String,
    /// GitLab path.
    pub gitlab: String,
    /// Target name.
    pub target: String,
    /// `queued`, `running`, `success`, `failed`, `canceled`, `skipped`, `error`.
    pub status: String,
    /// Ref.
    #[serde(rename = "ref")]
    pub git_ref: Option<String>,
    /// Commit.
    pub sha: Option<String>,
    /// Pipeline id.
    pub pipeline_id: Option<u64>,
    /// Pipeline page.
    pub pipeline_url: Option<String>,
    /// Jobs by name.
    pub jobs: BTreeMap<String, JobRecord>,
    /// Artifacts folder.
    pub artifacts: Option<String>,
    /// Merge request page.
    pub merge_request: Option<String>,
    /// Promotion pipeline page.
    pub promoted: Option<String>,
    /// Why it was skipped or errored.
    pub reason: Option<String>,
    /// The run's log folder.
    pub log_dir: Option<String>,
    /// Created (RFC 3339).
    pub created_at: String,
    /// Last change (RFC 3339).
    pub updated_at: String,
}

/// A store failure.
#[derive(Debug, thiserror::Error)]
#[error("build store: {0}")]
pub struct BuildStoreError(#[from] rusqlite::Error);

/// Where build records live.
pub trait BuildStore: Send + Sync {
    /// Starts a run with one queued build per `(project, gitlab, target)`; returns the run id and
    /// the build ids in the same order.
    fn create_run(&self, builds: &[(String, String, String)]) -> Result<(i64, Vec<i64>), BuildStoreError>;
    /// Saves a build's current state.
    fn save(&self, build: &BuildRecord) -> Result<(), BuildStoreError>;
    /// One build.
    fn get(&self, id: i64) -> Result<Option<BuildRecord>, BuildStoreError>;
    /// The newest builds first.
    fn list(&self, limit: usize) -> Result<Vec<BuildRecord>, BuildStoreError>;
}

/// The SQLite build store.
#[derive(Debug)]
pub struct SqliteBuilds {
    conn: Mutex<Connection>,
}

impl SqliteBuilds {
    /// Opens (creating) the database at `path`.
    pub fn open(path: &Path) -> Result<Self, BuildStoreError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS runs (id INTEGER PRIMARY KEY, created_at TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS builds (id INTEGER PRIMARY KEY, run INTEGER NOT NULL, data TEXT NOT NULL);",
        )?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|e| e.into_inner())
    }
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl BuildStore for SqliteBuilds {
    fn create_run(&self, builds: &[(String, String, String)]) -> Result<(i64, Vec<i64>), BuildStoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        tx.execute("INSERT INTO runs (created_at) VALUES (?1)", [now()])?;
        let run = tx.last_insert_rowid();
        let mut ids = Vec::new();
        for (project, gitlab, target) in builds {
            tx.execute("INSERT INTO builds (run, data) VALUES (?1, '{}')", [run])?;
            let id = tx.last_insert_rowid();
            let at = now();
            let record = BuildRecord {
                id,
                run,
                project: project.clone(),
                gitlab: gitlab.clone(),
                target: target.clone(),
                status: "queued".into(),
                git_ref: None,
                sha: None,
                pipeline_id: None,
                pipeline_url: None,
                jobs: BTreeMap::new(),
                artifacts: None,
                merge_request: None,
                promoted: None,
                reason: None,
                log_dir: None,
                created_at: at.clone(),
                updated_at: at,
            };
            tx.execute(
                "UPDATE builds SET data = ?2 WHERE id = ?1",
                params![id, serde_json::to_string(&record).unwrap_or_default()],
            )?;
            ids.push(id);
        }
        tx.commit()?;
        Ok((run, ids))
    }

    fn save(&self, build: &BuildRecord) -> Result<(), BuildStoreError> {
        let mut b = build.clone();
        b.updated_at = now();
        self.conn().execute(
            "UPDATE builds SET data = ?2 WHERE id = ?1",
            params![b.id, serde_json::to_string(&b).unwrap_or_default()],
        )?;
        Ok(())
    }

    fn get(&self, id: i64) -> Result<Option<BuildRecord>, BuildStoreError> {
        let data: Option<String> =
            self.conn().query_row("SELECT data FROM builds WHERE id = ?1", [id], |r| r.get(0)).optional()?;
        Ok(data.and_then(|d| serde_json::from_str(&d).ok()))
    }

    fn list(&self, limit: usize) -> Result<Vec<BuildRecord>, BuildStoreError> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT data FROM builds ORDER BY id DESC LIMIT ?1")?;
        let rows = stmt.query_map([i64::try_from(limit).unwrap_or(i64::MAX)], |r| r.get::<_, String>(0))?;
        Ok(rows.filter_map(Result::ok).filter_map(|d| serde_json::from_str(&d).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_and_builds_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteBuilds::open(&dir.path().join("builds.db")).unwrap();
        let (run, ids) = store
            .create_run(&[("fw".into(), "acme/fw".into(), "t1".into()), ("fw".into(), "acme/fw".into(), "t2".into())])
            .unwrap();
        assert_eq!(ids.len(), 2);
        let mut b = store.get(ids[1]).unwrap().unwrap();
        assert_eq!((b.run, b.status.as_str(), b.target.as_str()), (run, "queued", "t2"));
        b.status = "success".into();
        b.jobs.insert("build".into(), JobRecord { id: 7, status: "success".into(), log: None });
        store.save(&b).unwrap();
        let list = store.list(10).unwrap();
        assert_eq!(list[0].id, ids[1]);
        assert_eq!(list[0].status, "success");
        assert_eq!(list[0].jobs["build"].id, 7);
        assert!(store.get(999).unwrap().is_none());
    }
}
