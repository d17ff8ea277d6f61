//! Password hashing (argon2), a bounded number at once, shared fairly
//! between the addresses asking.
//!
//! Every argon2 computation of the process (logins, password changes,
//! activations, the operator's `user create`) takes a [`PasswordPermit`]
//! first. At most `permits` run at once; the rest wait, at most
//! `per_source` per source (an address) and `waiting` in all. Waiters are
//! served round-robin by source, not first-in first-out: a flood from 150
//! addresses costs an honest login one turn of each of them, not the whole
//! queue (it cost 37 s before). A caller past a bound is refused at once
//! ([`Busy`]), costing nothing.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::auth::{PasswordError, hash_password, verify_password};

/// The bounds of [`PasswordWork`].
#[derive(Clone, Copy, Debug)]
pub struct PasswordLimits {
    /// Argon2 computations running at once (each takes ~19 MiB and a core).
    pub permits: usize,
    /// Computations one source may have running or waiting.
    pub per_source: usize,
    /// Callers that may wait in all.
    pub waiting: usize,
}

impl Default for PasswordLimits {
    fn default() -> Self {
        // Four per address: an office behind one NAT logging in at once
        // is served; a flood from it waits its turn like any one source.
        PasswordLimits {
            permits: 2,
            per_source: 4,
            waiting: 512,
        }
    }
}

/// Too much password work is waiting (for this source, or in all): try
/// again later. Nothing was computed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("the server is busy checking passwords; try again in a few seconds")]
pub struct Busy {
    /// Whether this source's own share was full (a per-source refusal)
    /// rather than the whole process's.
    pub source_full: bool,
}

#[derive(Debug, Default)]
struct Queue {
    running: usize,
    /// Running or waiting, per source.
    per_source: HashMap<String, usize>,
    /// Waiters of each source, in order.
    waiters: HashMap<String, VecDeque<oneshot::Sender<PasswordPermit>>>,
    /// Sources with waiters, in round-robin order.
    turns: VecDeque<String>,
    waiting: usize,
}

impl Queue {
    /// The next waiter, round-robin by source.
    fn next_waiter(&mut self) -> Option<(String, oneshot::Sender<PasswordPermit>)> {
        let source = self.turns.pop_front()?;
        let of_source = self.waiters.get_mut(&source)?;
        let sender = of_source.pop_front()?;
        if of_source.is_empty() {
            self.waiters.remove(&source);
        } else {
            self.turns.push_back(source.clone());
        }
        self.waiting -= 1;
        Some((source, sender))
    }

    fn forget_one(&mut self, source: &str) {
        if let Some(count) = self.per_source.get_mut(source) {
            *count -= 1;
            if *count == 0 {
                self.per_source.remove(source);
            }
        }
    }
}

#[derive(Debug)]
struct Inner {
    limits: PasswordLimits,
    queue: Mutex<Queue>,
    /// Argon2 computations finished (a test hook: refused attempts must not
    /// add to it).
    runs: AtomicU64,
    computing: AtomicUsize,
    peak: AtomicUsize,
    /// While true, computations wait before starting (a test hook, like
    /// `store::faults`: it makes "a sync completes while argon2 is busy" an
    /// ordering, not a timing).
    held: Mutex<bool>,
    released: Condvar,
}

/// The right to run one argon2 computation. Dropping it hands the slot to
/// the next waiter.
#[derive(Debug)]
pub struct PasswordPermit {
    inner: Arc<Inner>,
    source: String,
    /// False for a permit that was never delivered (its waiter left): its
    /// drop must not release a slot it does not hold.
    armed: bool,
}

impl Drop for PasswordPermit {
    fn drop(&mut self) {
        if self.armed {
            self.inner.release(&self.source);
        }
    }
}

impl Inner {
    fn release(self: &Arc<Self>, source: &str) {
        let Ok(mut queue) = self.queue.lock() else {
            return;
        };
        queue.forget_one(source);
        while let Some((next, sender)) = queue.next_waiter() {
            let permit = PasswordPermit {
                inner: self.clone(),
                source: next.clone(),
                armed: true,
            };
            match sender.send(permit) {
                // The slot moves to the waiter: `running` is unchanged.
                Ok(()) => return,
                Err(mut undelivered) => {
                    // The waiter gave up (its request was dropped).
                    undelivered.armed = false;
                    queue.forget_one(&next);
                }
            }
        }
        queue.running -= 1;
    }
}

/// The process's argon2 work. Cheap to clone; clones share the bound.
#[derive(Clone, Debug)]
pub struct PasswordWork {
    inner: Arc<Inner>,
}

impl Default for PasswordWork {
    fn default() -> Self {
        PasswordWork::new(PasswordLimits::default())
    }
}

impl PasswordWork {
    pub fn new(limits: PasswordLimits) -> Self {
        let limits = PasswordLimits {
            permits: limits.permits.max(1),
            per_source: limits.per_source.max(1),
            waiting: limits.waiting,
        };
        PasswordWork {
            inner: Arc::new(Inner {
                limits,
                queue: Mutex::new(Queue::default()),
                runs: AtomicU64::new(0),
                computing: AtomicUsize::new(0),
                peak: AtomicUsize::new(0),
                held: Mutex::new(false),
                released: Condvar::new(),
            }),
        }
    }

    pub fn limits(&self) -> PasswordLimits {
        self.inner.limits
    }

    /// Takes a slot for `source`, waiting for its turn, or refuses at once
    /// past a bound.
    pub async fn permit(&self, source: &str) -> Result<PasswordPermit, Busy> {
        let waiting = {
            let mut queue = self
                .inner
                .queue
                .lock()
                .map_err(|_| Busy { source_full: false })?;
            let mine = queue.per_source.get(source).copied().unwrap_or(0);
            if mine >= self.inner.limits.per_source {
                return Err(Busy { source_full: true });
            }
            if queue.running < self.inner.limits.permits && queue.waiting == 0 {
                queue.running += 1;
                *queue.per_source.entry(source.to_owned()).or_default() += 1;
                return Ok(PasswordPermit {
                    inner: self.inner.clone(),
                    source: source.to_owned(),
                    armed: true,
                });
            }
            if queue.waiting >= self.inner.limits.waiting {
                return Err(Busy { source_full: false });
            }
            *queue.per_source.entry(source.to_owned()).or_default() += 1;
            let (sender, receiver) = oneshot::channel();
            let of_source = queue.waiters.entry(source.to_owned()).or_default();
            let first = of_source.is_empty();
            of_source.push_back(sender);
            if first {
                queue.turns.push_back(source.to_owned());
            }
            queue.waiting += 1;
            receiver
        };
        waiting.await.map_err(|_| Busy { source_full: false })
    }

    /// Argon2 computations finished so far.
    pub fn runs(&self) -> u64 {
        self.inner.runs.load(Ordering::SeqCst)
    }

    /// Argon2 computations in progress now.
    pub fn running(&self) -> usize {
        self.inner.computing.load(Ordering::SeqCst)
    }

    /// The most that were ever in progress at once.
    pub fn peak(&self) -> usize {
        self.inner.peak.load(Ordering::SeqCst)
    }

    /// Callers waiting for a slot now.
    pub fn waiting(&self) -> usize {
        self.inner.queue.lock().map(|q| q.waiting).unwrap_or(0)
    }

    /// Test hook: computations that got a slot wait until [`Self::release`].
    pub fn hold(&self) {
        *self.inner.held.lock().unwrap_or_else(|e| e.into_inner()) = true;
    }

    pub fn release(&self) {
        *self.inner.held.lock().unwrap_or_else(|e| e.into_inner()) = false;
        self.inner.released.notify_all();
    }

    /// Runs `job` on the blocking pool under a slot of `source`. The permit
    /// moves into the job, so a request dropped while it runs does not free
    /// the slot early.
    async fn run<T: Send + 'static>(
        &self,
        source: &str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<Option<T>, Busy> {
        let permit = self.permit(source).await?;
        let inner = self.inner.clone();
        Ok(tokio::task::spawn_blocking(move || {
            let _permit = permit;
            let now = inner.computing.fetch_add(1, Ordering::SeqCst) + 1;
            inner.peak.fetch_max(now, Ordering::SeqCst);
            {
                let mut held = inner.held.lock().unwrap_or_else(|e| e.into_inner());
                while *held {
                    held = inner.released.wait(held).unwrap_or_else(|e| e.into_inner());
                }
            }
            let result = job();
            inner.runs.fetch_add(1, Ordering::SeqCst);
            inner.computing.fetch_sub(1, Ordering::SeqCst);
            result
        })
        .await
        .ok())
    }

    /// Whether `password` matches `stored`. No stored hash (an unknown,
    /// invited or disabled account) is verified against a dummy, so it
    /// costs the same, and never matches.
    pub async fn verify(
        &self,
        source: &str,
        password: String,
        stored: Option<String>,
    ) -> Result<bool, Busy> {
        let stored = stored.filter(|s| !s.is_empty());
        let real = stored.is_some();
        let stored = stored.unwrap_or_else(|| DUMMY_HASH.to_owned());
        let matched = self
            .run(source, move || verify_password(&password, &stored))
            .await?
            .unwrap_or(false);
        Ok(matched && real)
    }

    /// Hashes a new password (at least 8 characters; a shorter one is
    /// refused before it takes a slot).
    pub async fn hash(&self, source: &str, password: String) -> Result<String, PasswordError> {
        if password.chars().count() < 8 {
            return Err(PasswordError::TooShort);
        }
        self.run(source, move || hash_password(&password))
            .await
            .map_err(PasswordError::Busy)?
            .unwrap_or_else(|| Err(PasswordError::Hash("the hashing task failed".into())))
    }
}

/// Verified against when an account is unknown, invited without a password
/// yet, or disabled, so the time a refusal takes does not tell which it was.
const DUMMY_HASH: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$W3Ykvpl1cxTg9ZQ4Jm3s6mF1m0qQ1bLHD7G2kTfG8oM";

/// How long a caller refused with [`Busy`] should wait.
pub const BUSY_RETRY_AFTER: Duration = Duration::from_secs(2);

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(permits: usize, per_source: usize, waiting: usize) -> PasswordLimits {
        PasswordLimits {
            permits,
            per_source,
            waiting,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn argon2_runs_a_bounded_number_at_once() {
        let work = PasswordWork::new(limits(2, 8, 64));
        let stored = hash_password("correct horse").expect("hash");
        work.hold();
        let jobs: Vec<_> = (0..6)
            .map(|i| {
                let (work, stored) = (work.clone(), stored.clone());
                tokio::spawn(async move {
                    let password = if i == 0 {
                        "correct horse"
                    } else {
                        "wrong horse!"
                    };
                    work.verify("10.0.0.1", password.to_owned(), Some(stored))
                        .await
                        .expect("within the bounds")
                })
            })
            .collect();
        while work.running() < 2 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(work.runs(), 0);
        work.release();
        let mut matched = 0;
        for job in jobs {
            matched += usize::from(job.await.expect("join"));
        }
        assert_eq!(matched, 1);
        assert_eq!(work.runs(), 6);
        assert_eq!(work.peak(), 2);
        assert!(!work.verify("a", String::new(), None).await.expect("ok"));
        assert_eq!(work.runs(), 7, "no stored hash still costs a run");
        assert!(matches!(
            work.hash("a", "short".into()).await,
            Err(PasswordError::TooShort)
        ));
        assert_eq!(work.runs(), 7, "a too-short password is refused unhashed");
    }

    #[tokio::test]
    async fn one_source_is_refused_past_its_share_and_everyone_past_the_queue() {
        let work = PasswordWork::new(limits(1, 2, 3));
        let first = work.permit("a").await.expect("free slot");
        let a2 = tokio::spawn({
            let work = work.clone();
            async move { work.permit("a").await.map(drop) }
        });
        while work.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            work.permit("a").await.err(),
            Some(Busy { source_full: true }),
            "a third for one source is refused at once"
        );
        let b = tokio::spawn({
            let work = work.clone();
            async move { work.permit("b").await.map(drop) }
        });
        let c = tokio::spawn({
            let work = work.clone();
            async move { work.permit("c").await.map(drop) }
        });
        while work.waiting() < 3 {
            tokio::task::yield_now().await;
        }
        assert_eq!(
            work.permit("d").await.err(),
            Some(Busy { source_full: false }),
            "the queue is full"
        );
        drop(first);
        for job in [a2, b, c] {
            job.await.expect("join").expect("served in turn");
        }
        assert_eq!(work.waiting(), 0);
        let again = work.permit("a").await.expect("slots all returned");
        drop(again);
    }

    #[tokio::test]
    async fn waiters_are_served_round_robin_by_source() {
        let work = PasswordWork::new(limits(1, 100, 1000));
        let holder = work.permit("flood-0").await.expect("free slot");
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut jobs = Vec::new();
        // Ten flooding sources queue three each, then one honest caller.
        for round in 0..3 {
            for source in 0..10 {
                let (work, order) = (work.clone(), order.clone());
                let name = format!("flood-{source}");
                jobs.push(tokio::spawn(async move {
                    let permit = work.permit(&name).await.expect("queued");
                    order.lock().expect("order").push(name);
                    drop(permit);
                }));
                let _ = round;
                tokio::task::yield_now().await;
            }
        }
        while work.waiting() < 30 {
            tokio::task::yield_now().await;
        }
        let honest = {
            let (work, order) = (work.clone(), order.clone());
            tokio::spawn(async move {
                let permit = work.permit("honest").await.expect("queued");
                order.lock().expect("order").push("honest".to_owned());
                drop(permit);
            })
        };
        while work.waiting() < 31 {
            tokio::task::yield_now().await;
        }
        drop(holder);
        honest.await.expect("join");
        for job in jobs {
            job.await.expect("join");
        }
        let order = order.lock().expect("order");
        let position = order.iter().position(|s| s == "honest").expect("served");
        assert!(
            position <= 11,
            "the honest caller waits one turn of each source, not the whole queue: {position} in {order:?}"
        );
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_does_not_keep_its_slot() {
        let work = PasswordWork::new(limits(1, 1, 10));
        let holder = work.permit("a").await.expect("free slot");
        let gives_up = tokio::spawn({
            let work = work.clone();
            async move { work.permit("b").await.map(drop) }
        });
        while work.waiting() < 1 {
            tokio::task::yield_now().await;
        }
        gives_up.abort();
        let _ = gives_up.await;
        drop(holder);
        // "b"'s share is free again, and so is the slot.
        let b = tokio::time::timeout(Duration::from_secs(5), work.permit("b"))
            .await
            .expect("not stuck")
            .expect("b's share was returned");
        drop(b);
    }
}
