//! Deterministic first changes.
//!
//! Every branch document starts with a genesis change made by a fixed actor
//! at a fixed time with fixed root maps in a fixed order. Two replicas that
//! build the genesis of the same (branch, month) independently, say two
//! phones opening a new month offline, get byte-identical changes with equal
//! hashes, so their documents share an ancestry and merge.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjType};

use crate::ids::TenantId;
use crate::values::Month;

/// The actor of every genesis change: 16 zero bytes. No device may use it.
pub const GENESIS_ACTOR: [u8; 16] = [0; 16];

/// A monthly log's root maps, in the order its genesis creates them: fixed
/// for good, as the genesis hash depends on it (the device's record index
/// stores a collection as its place here).
pub const LOG_COLLECTIONS: &[&str] = &["visits", "activities", "trainings", "placements", "fund"];

/// Which branch document.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum DocumentKind {
    Roster,
    MonthlyLog(Month),
}

impl DocumentKind {
    /// The root maps, in the order the genesis creates them.
    pub fn collections(&self) -> &'static [&'static str] {
        match self {
            DocumentKind::Roster => &["members", "hardship", "pairings", "teams"],
            DocumentKind::MonthlyLog(_) => LOG_COLLECTIONS,
        }
    }
}

/// The genesis document of a branch document. Its actor is the genesis
/// actor: set the editing replica's own actor before making changes.
pub fn genesis(branch: TenantId, kind: DocumentKind) -> Automerge {
    let mut doc = Automerge::new().with_actor(ActorId::from(GENESIS_ACTOR));
    let mut tx = doc.transaction();
    let result = (|| {
        tx.put(automerge::ROOT, "schema", 1_i64)?;
        tx.put(automerge::ROOT, "branch", branch.to_string())?;
        match kind {
            DocumentKind::Roster => tx.put(automerge::ROOT, "kind", "roster")?,
            DocumentKind::MonthlyLog(month) => {
                tx.put(automerge::ROOT, "kind", "log")?;
                tx.put(automerge::ROOT, "month", month.to_string())?;
            }
        }
        for collection in kind.collections() {
            tx.put_object(automerge::ROOT, *collection, ObjType::Map)?;
        }
        Ok::<_, automerge::AutomergeError>(())
    })();
    result.expect("writing fixed values into a fresh transaction cannot fail");
    tx.commit_with(CommitOptions::default().with_time(0));
    doc
}
