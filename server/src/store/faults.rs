//! A [`DocumentStore`] that fails on demand, for tests of the failure paths.
//!
//! It wraps the real store, so what does succeed is really on disk. Each
//! fault is armed by a test and fires once: the Nth commit from now fails, a
//! compaction fails, or loads of a document wait at a gate the test opens.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use automerge::ChangeHash;
use doorstep_protocol::DocumentId;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use super::StoreError;
use super::keeping::{Commit, CommitError, Committed, DocumentStore, StoredChunks};
use crate::projection::ProjectionPlan;

/// The real store with switches.
#[derive(Debug)]
pub struct FaultyStore<S> {
    inner: S,
    /// Commits left before the armed failure; 0 is disarmed.
    fail_commit_in: AtomicU64,
    fail_compaction: AtomicBool,
    commits: AtomicU64,
    compactions: AtomicU64,
    compaction_attempts: AtomicU64,
    gates: Mutex<HashMap<DocumentId, watch::Receiver<bool>>>,
    loads_started: Mutex<HashMap<DocumentId, u64>>,
}

/// Holds loads of one document until opened (or dropped).
#[derive(Debug)]
pub struct LoadGate(watch::Sender<bool>);

impl LoadGate {
    pub fn open(self) {
        let _ = self.0.send(true);
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::Invalid(format!("injected fault: {what}"))
}

impl<S: DocumentStore> FaultyStore<S> {
    pub fn new(inner: S) -> Arc<Self> {
        Arc::new(FaultyStore {
            inner,
            fail_commit_in: AtomicU64::new(0),
            fail_compaction: AtomicBool::new(false),
            commits: AtomicU64::new(0),
            compactions: AtomicU64::new(0),
            compaction_attempts: AtomicU64::new(0),
            gates: Mutex::new(HashMap::new()),
            loads_started: Mutex::new(HashMap::new()),
        })
    }

    /// The `n`th commit from now (1 = the next) fails without writing.
    pub fn fail_nth_commit(&self, n: u64) {
        self.fail_commit_in.store(n, Ordering::SeqCst);
    }

    /// The next compaction fails without writing.
    pub fn fail_next_compaction(&self) {
        self.fail_compaction.store(true, Ordering::SeqCst);
    }

    /// Commits that reached the real store.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::SeqCst)
    }

    /// Compactions that reached the real store.
    pub fn compactions(&self) -> u64 {
        self.compactions.load(Ordering::SeqCst)
    }

    /// Compactions tried, failed ones included.
    pub fn compaction_attempts(&self) -> u64 {
        self.compaction_attempts.load(Ordering::SeqCst)
    }

    /// Loads of `id` wait until the returned gate opens.
    pub fn hold_loads(&self, id: DocumentId) -> LoadGate {
        let (tx, rx) = watch::channel(false);
        if let Ok(mut gates) = self.gates.lock() {
            gates.insert(id, rx);
        }
        LoadGate(tx)
    }

    /// How many loads of `id` have started (including ones held at a gate).
    pub fn loads_started(&self, id: DocumentId) -> u64 {
        self.loads_started
            .lock()
            .map(|l| l.get(&id).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn commit_should_fail(&self) -> bool {
        self.fail_commit_in
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                0 => None,
                n => Some(n - 1),
            })
            .is_ok_and(|left| left == 1)
    }
}

impl<S: DocumentStore> DocumentStore for FaultyStore<S> {
    fn load(&self, id: DocumentId) -> BoxFuture<'_, Result<StoredChunks, StoreError>> {
        Box::pin(async move {
            if let Ok(mut started) = self.loads_started.lock() {
                *started.entry(id).or_default() += 1;
            }
            let gate = self.gates.lock().ok().and_then(|g| g.get(&id).cloned());
            if let Some(mut gate) = gate {
                // A dropped gate releases too.
                let _ = gate.wait_for(|open| *open).await;
            }
            self.inner.load(id).await
        })
    }

    fn load_after(
        &self,
        id: DocumentId,
        after: i64,
    ) -> BoxFuture<'_, Result<StoredChunks, StoreError>> {
        self.inner.load_after(id, after)
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<Committed, CommitError>> {
        Box::pin(async move {
            if self.commit_should_fail() {
                return Err(CommitError::Store(injected("commit")));
            }
            let committed = self.inner.commit(commit).await?;
            self.commits.fetch_add(1, Ordering::SeqCst);
            Ok(committed)
        })
    }

    fn compact<'a>(
        &'a self,
        id: DocumentId,
        snapshot: &'a [u8],
        replaced: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            self.compaction_attempts.fetch_add(1, Ordering::SeqCst);
            if self.fail_compaction.swap(false, Ordering::SeqCst) {
                return Err(injected("compaction"));
            }
            self.inner.compact(id, snapshot, replaced).await?;
            self.compactions.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
    }

    fn reproject<'a>(
        &'a self,
        id: DocumentId,
        heads: &'a [ChangeHash],
        plan: &'a ProjectionPlan,
        seq: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>> {
        self.inner.reproject(id, heads, plan, seq)
    }

    fn load_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        self.inner.load_sync_state(id, key)
    }

    fn save_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
        state: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        self.inner.save_sync_state(id, key, state)
    }
}
