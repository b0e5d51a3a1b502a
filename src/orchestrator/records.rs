//! Records: the orchestrator's only way to the build store. Every step of a build is saved as it
//! happens (read, change, write in one transaction), off the async threads.

use std::sync::Arc;

use crate::builds::{BuildRecord, BuildStore, BuildWork, NewBuild};

use super::OrchestratorError;

/// The build store, seen from the orchestrator.
#[derive(Clone)]
pub struct Records {
    store: Arc<dyn BuildStore>,
}

impl Records {
    /// Records kept in `store`.
    pub fn new(store: Arc<dyn BuildStore>) -> Self {
        Self { store }
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn BuildStore) -> Result<T, crate::builds::BuildStoreError> + Send + 'static,
    ) -> Result<T, OrchestratorError> {
        let store = self.store.clone();
        Ok(tokio::task::spawn_blocking(move || f(store.as_ref())).await??)
    }

    /// A new run: one queued build per entry. Returns the run id and the build ids.
    pub async fn create_run(
        &self,
        builds: Vec<NewBuild>,
        log_dir: String,
    ) -> Result<(i64, Vec<i64>), OrchestratorError> {
        self.blocking(move |s| s.create_run(&builds, Some(&log_dir))).await
    }

    /// Changes build `id` and saves it; returns it as saved.
    pub async fn update(
        &self,
        id: i64,
        mut change: impl FnMut(&mut BuildRecord, &mut BuildWork) + Send + 'static,
    ) -> Result<(BuildRecord, BuildWork), OrchestratorError> {
        self.blocking(move |s| s.update(id, &mut change)).await?.ok_or(OrchestratorError::NoBuild(id))
    }

    /// Build `id` with its work.
    pub async fn get(&self, id: i64) -> Result<(BuildRecord, BuildWork), OrchestratorError> {
        self.blocking(move |s| s.get_with_work(id)).await?.ok_or(OrchestratorError::NoBuild(id))
    }

    /// Every build of `run`, in id order.
    pub async fn run(&self, run: i64) -> Result<Vec<(BuildRecord, BuildWork)>, OrchestratorError> {
        self.blocking(move |s| s.run_builds(run)).await
    }

    /// Runs with builds `owner` has not finished.
    pub async fn unfinished_runs(&self, owner: crate::builds::Owner) -> Result<Vec<i64>, OrchestratorError> {
        self.blocking(move |s| s.unfinished_runs(owner)).await
    }
}
