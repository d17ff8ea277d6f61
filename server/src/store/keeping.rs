//! What the document driver stores, behind one trait.
//!
//! The driver (`hub::document`) persists through [`DocumentStore`], so a
//! test can put a [`super::faults::FaultyStore`] in front of the database and
//! fail the Nth commit, a compaction or a load on purpose: the promises
//! ("nothing acknowledged is lost", "figures equal the documents") are tested
//! against the failures they depend on.
//!
//! A [`Commit`] is one transaction: the new chunks, the change log, actor
//! bindings, the projection rows of the records touched, the heads stored
//! and projected, and the sender's sync state. Either all of it is on disk
//! or none of it is, so a crash between two writes cannot leave the figures
//! behind the documents.

use automerge::{ActorId, ChangeHash};
use doorstep_protocol::keeper::NewChange;
use doorstep_protocol::{DeviceId, DocumentId};
use futures_util::future::BoxFuture;
use sha2::{Digest, Sha256};
use sqlx::Row;

use super::statement::Statement;

use super::{Store, StoreError, now_ms, parse_column};
use crate::projection::{self, ProjectionPlan};

/// Rows per multi-row statement: far below SQLite's 32,766 bound parameters.
pub(super) const ROWS_PER_STATEMENT: usize = 500;

/// Sync states kept per device and document. A state is keyed by the
/// storage id a connection presents, which a device chooses: a new one per
/// connection would otherwise add a row each time, for good. An app keeps
/// one storage id per install, so a handful covers reinstalls and a stock
/// client's cleared storage; past it the least recently saved goes, which
/// costs that storage id only a longer sync. A branch has a bounded number
/// of documents (its roster and a log per month), so this bounds a device's
/// rows in `sync_states`.
pub const SYNC_STATES_PER_DEVICE_AND_DOCUMENT: i64 = 8;

/// Every stored chunk of a document, with the keys compaction deletes by.
#[derive(Debug, Default)]
pub struct StoredChunks {
    /// The document's commit number when the chunks were read (read
    /// first: the chunks hold at least every commit up to it).
    pub seq: i64,
    pub chunks: Vec<Vec<u8>>,
    /// How many of `chunks`, from the front, are snapshots.
    pub snapshots: usize,
    /// The `hash` column of each chunk, in the same order.
    pub keys: Vec<String>,
    pub snapshot_bytes: u64,
    pub incremental_bytes: u64,
    /// How many of the document's actors each device added (from the
    /// change log): each device's used share of the document's actors.
    pub device_actors: std::collections::HashMap<DeviceId, usize>,
}

impl StoredChunks {
    /// The document these chunks make: snapshots first, then every
    /// incremental in one call, so Automerge orders them itself (by
    /// dependencies and each actor's sequence) whatever order they were
    /// stored in. The one way a stored document is loaded (the hub, and
    /// `reproject`); it runs on the calling thread, so call it on the
    /// blocking pool.
    pub fn load(&self, id: DocumentId) -> Result<automerge::Automerge, StoreError> {
        let corrupt = |e: automerge::AutomergeError| {
            StoreError::Corrupt(format!("document {id} does not load: {e}"))
        };
        let mut doc = automerge::Automerge::new();
        let (snapshots, incrementals) = self.chunks.split_at(self.snapshots.min(self.chunks.len()));
        for snapshot in snapshots {
            doc.load_incremental(snapshot).map_err(corrupt)?;
        }
        let joined = incrementals.concat();
        if !joined.is_empty() {
            doc.load_incremental(&joined).map_err(corrupt)?;
        }
        Ok(doc)
    }
}

impl StoredChunks {
    pub fn stored_bytes(&self) -> u64 {
        self.snapshot_bytes + self.incremental_bytes
    }
}

/// One message's worth of durable state, written in one transaction.
#[derive(Debug)]
pub struct Commit<'a> {
    pub document: DocumentId,
    pub device: DeviceId,
    pub changes: &'a [NewChange],
    /// Bound to `device` on first use; one bound to another device refuses
    /// the whole commit.
    pub actors: &'a [ActorId],
    pub heads: &'a [ChangeHash],
    /// The rows of the records the changes touched. `None` (the projection
    /// could not be computed) stores the changes and leaves the document's
    /// "projected up to" marker behind, so it is re-projected.
    pub projection: Option<&'a ProjectionPlan>,
    /// (sync state key, state) of the sender.
    pub sync_state: Option<(&'a str, &'a [u8])>,
    /// The document's commit number the committing document holds every
    /// change up to. When another node committed since, nothing is stored
    /// ([`StoreError::Behind`]): the changes were checked against a
    /// document that lacks the other node's.
    pub known_seq: i64,
    /// Whether `projection` plans the whole document (not just the records
    /// the changes touched): only such a plan levels figures that lagged.
    pub whole_projection: bool,
}

/// What a commit did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed {
    /// The document's commit number this commit took.
    pub seq: i64,
    /// Whether the projection rows now reflect the document (false: no
    /// plan was given, or it covered only the touched records of figures
    /// that already lagged).
    pub projected: bool,
}

/// Why a commit did not happen.
#[derive(Debug, thiserror::Error)]
pub enum CommitError {
    #[error("actor {actor} is bound to another device")]
    ForeignActor { actor: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<sqlx::Error> for CommitError {
    fn from(e: sqlx::Error) -> Self {
        CommitError::Store(e.into())
    }
}

/// The storage the document driver needs.
pub trait DocumentStore: Send + Sync + std::fmt::Debug + 'static {
    /// Every chunk of a document, snapshots first.
    fn load(&self, id: DocumentId) -> BoxFuture<'_, Result<StoredChunks, StoreError>>;
    /// The chunks stored by commits numbered after `after` (other server
    /// nodes' commits, for a document this node holds), snapshots first.
    fn load_after(
        &self,
        id: DocumentId,
        after: i64,
    ) -> BoxFuture<'_, Result<StoredChunks, StoreError>>;
    /// Stores a batch and everything that goes with it, atomically, and
    /// announces the document's new commit number to the other nodes.
    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<Committed, CommitError>>;
    /// Writes a verified snapshot and deletes exactly the chunks `replaced`
    /// (which it covers), in one transaction.
    fn compact<'a>(
        &'a self,
        id: DocumentId,
        snapshot: &'a [u8],
        replaced: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    /// Replaces every projection row of a document and moves its marker to
    /// `heads`: the catch-up for a document whose marker lags. Only while
    /// the document's commit number is still `seq`, the number the plan's
    /// document holds every change up to: a commit since (on this node or
    /// another) must not be overwritten by an older plan. `false` when it
    /// was skipped for that reason.
    fn reproject<'a>(
        &'a self,
        id: DocumentId,
        heads: &'a [ChangeHash],
        plan: &'a ProjectionPlan,
        seq: i64,
    ) -> BoxFuture<'a, Result<bool, StoreError>>;
    fn load_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>>;
    fn save_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
        state: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

/// Heads as stored in `documents.heads` / `projected_heads`: sorted hex,
/// comma-joined, so equal sets compare equal as text.
pub fn heads_text(heads: &[ChangeHash]) -> String {
    let mut hex: Vec<String> = heads.iter().map(ToString::to_string).collect();
    hex.sort();
    hex.join(",")
}

/// The key a snapshot chunk is stored under.
pub fn snapshot_key(snapshot: &[u8]) -> String {
    hex::encode(Sha256::digest(snapshot))
}

impl DocumentStore for Store {
    fn load(&self, id: DocumentId) -> BoxFuture<'_, Result<StoredChunks, StoreError>> {
        Box::pin(async move {
            // Chunks of commits before the numbering have number 0.
            let mut stored = self.load_after(id, -1).await?;
            let shares = sqlx::query(
                "select device_id, count(distinct actor_id) as actors from change_log
                 where document_id = $1 and device_id is not null group by device_id",
            )
            .bind(id.to_string())
            .fetch_all(self.every_branch())
            .await?;
            for row in shares {
                let device: String = row.try_get("device_id")?;
                let actors: i64 = row.try_get("actors")?;
                stored.device_actors.insert(
                    super::parse_column(&device, "device id")?,
                    usize::try_from(actors).unwrap_or(usize::MAX),
                );
            }
            Ok(stored)
        })
    }

    fn load_after(
        &self,
        id: DocumentId,
        after: i64,
    ) -> BoxFuture<'_, Result<StoredChunks, StoreError>> {
        Box::pin(async move {
            // The number first: a commit between the two reads is then
            // read again next time, never skipped.
            let seq: i64 = sqlx::query_scalar("select seq from documents where id = $1")
                .bind(id.to_string())
                .fetch_optional(self.every_branch())
                .await?
                .unwrap_or(0);
            // Incrementals in the order they were stored, which is causal:
            // two changes of one actor that are concurrent by their
            // dependencies still must load in sequence order, and ordering
            // by hash would not.
            let rows = sqlx::query(&format!(
                "select kind, hash, bytes from chunks where document_id = $1 and doc_seq > $2
                 order by case kind when 'snapshot' then 0 else 1 end, {}",
                self.chunk_order()
            ))
            .bind(id.to_string())
            .bind(after)
            .fetch_all(self.every_branch())
            .await?;
            let mut stored = StoredChunks {
                seq,
                ..StoredChunks::default()
            };
            for row in rows {
                let kind: String = row.try_get("kind")?;
                let bytes: Vec<u8> = row.try_get("bytes")?;
                if kind == "snapshot" {
                    stored.snapshots += 1;
                    stored.snapshot_bytes += bytes.len() as u64;
                } else {
                    stored.incremental_bytes += bytes.len() as u64;
                }
                stored.keys.push(row.try_get("hash")?);
                stored.chunks.push(bytes);
            }
            Ok(stored)
        })
    }

    fn commit<'a>(&'a self, commit: Commit<'a>) -> BoxFuture<'a, Result<Committed, CommitError>> {
        Box::pin(async move {
            let now = now_ms();
            let document = commit.document.to_string();
            let device = commit.device.to_string();
            let mut tx = self.begin_write().await?;
            // The document's row stays locked to the end of the
            // transaction, so numbers are given in commit order.
            let (seq, projected_before): (i64, i64) = sqlx::query_as(
                "update documents set seq = seq + 1 where id = $1 returning seq, projected_seq",
            )
            .bind(&document)
            .fetch_optional(&mut *tx)
            .await?
            .ok_or_else(|| StoreError::Invalid(format!("document {document} is not stored")))?;
            if seq - 1 != commit.known_seq {
                // Every check of these changes ran against a document that
                // lacks another node's (a repeated sequence number, a second
                // form of one original): none of it may be stored. Dropping
                // the transaction rolls it back.
                return Err(CommitError::Store(StoreError::Behind));
            }
            // A plan of the records these changes touched brings the
            // figures level only if they were level before; a plan of the
            // whole document always does.
            let levels = commit.whole_projection || projected_before == seq - 1;

            for actors in commit.actors.chunks(ROWS_PER_STATEMENT) {
                let mut insert = Statement::new(
                    "insert into device_actors (actor_id, device_id, registered_at) ",
                );
                insert.push_values(actors, |row, actor| {
                    row.push_bind(actor.to_hex_string())
                        .push_bind(&device)
                        .push_bind(now);
                });
                insert.push(" on conflict (actor_id) do nothing");
                insert.build()?.execute(&mut *tx).await?;

                let mut owners = Statement::new(
                    "select actor_id, device_id from device_actors where actor_id in (",
                );
                owners.push_list(actors.iter().map(|actor| actor.to_hex_string()));
                for row in owners.build()?.fetch_all(&mut *tx).await? {
                    let owner: String = row.try_get("device_id")?;
                    if owner != device {
                        // Dropping the transaction rolls it back.
                        return Err(CommitError::ForeignActor {
                            actor: row.try_get("actor_id")?,
                        });
                    }
                }
            }

            for changes in commit.changes.chunks(ROWS_PER_STATEMENT) {
                let mut chunks = Statement::new(
                    "insert into chunks (document_id, kind, hash, bytes, created_at, doc_seq) ",
                );
                chunks.push_values(changes, |row, change| {
                    row.push_bind(&document)
                        .push_bind("incremental")
                        .push_bind(change.hash.to_string())
                        .push_bind(&change.bytes)
                        .push_bind(now)
                        .push_bind(seq);
                });
                chunks.push(" on conflict (document_id, hash) do nothing");
                chunks.build()?.execute(&mut *tx).await?;

                let mut log = Statement::new(
                    "insert into change_log (document_id, hash, actor_id, device_id, received_at) ",
                );
                log.push_values(changes, |row, change| {
                    row.push_bind(&document)
                        .push_bind(change.hash.to_string())
                        .push_bind(change.actor.to_hex_string())
                        .push_bind(&device)
                        .push_bind(now);
                });
                log.push(" on conflict (document_id, hash) do nothing");
                log.build()?.execute(&mut *tx).await?;
            }

            let heads = heads_text(commit.heads);
            let projected = match commit.projection {
                Some(plan) if levels => {
                    projection::write(&mut tx, plan).await?;
                    sqlx::query(
                        "update documents set heads = $1, projected_heads = $1, projected_seq = $2
                         where id = $3",
                    )
                    .bind(&heads)
                    .bind(seq)
                    .bind(&document)
                    .execute(&mut *tx)
                    .await?;
                    true
                }
                // Written, but the figures stay marked behind: the earlier
                // commit they lack is not in this plan.
                Some(plan) => {
                    projection::write(&mut tx, plan).await?;
                    sqlx::query("update documents set heads = $1 where id = $2")
                        .bind(&heads)
                        .bind(&document)
                        .execute(&mut *tx)
                        .await?;
                    false
                }
                None => {
                    sqlx::query("update documents set heads = $1 where id = $2")
                        .bind(&heads)
                        .bind(&document)
                        .execute(&mut *tx)
                        .await?;
                    false
                }
            };
            self.announce(&mut tx, commit.document, seq).await?;

            if let Some((key, state)) = commit.sync_state {
                upsert_sync_state(&mut tx, &document, key, state, now).await?;
            }
            tx.commit().await?;
            Ok(Committed { seq, projected })
        })
    }

    fn compact<'a>(
        &'a self,
        id: DocumentId,
        snapshot: &'a [u8],
        replaced: &'a [String],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let document = id.to_string();
            let key = snapshot_key(snapshot);
            let mut tx = self.begin_write().await?;
            // Written first: should the deletes fail, the transaction rolls
            // back whole, and at no point is a covered chunk gone without
            // the snapshot that replaces it. It holds no change that is not
            // stored already, so it takes the current number, not a new
            // one: a node that holds everything up to it need not read it,
            // and a node behind it reads it in place of the chunks it folds.
            sqlx::query(
                "insert into chunks (document_id, kind, hash, bytes, created_at, doc_seq)
                 select $1, 'snapshot', $2, $3, $4, seq from documents where id = $1
                 on conflict (document_id, hash) do nothing",
            )
            .bind(&document)
            .bind(&key)
            .bind(snapshot)
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
            let replaced: Vec<&String> = replaced.iter().filter(|k| **k != key).collect();
            for keys in replaced.chunks(ROWS_PER_STATEMENT) {
                let mut delete = Statement::new("delete from chunks where document_id = ");
                delete.push_bind(&document).push(" and hash in (");
                delete.push_list(keys.iter().map(|key| key.as_str()));
                delete.build()?.execute(&mut *tx).await?;
            }
            tx.commit().await?;
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
        Box::pin(async move {
            let heads = heads_text(heads);
            let mut tx = self.begin_write().await?;
            let moved = sqlx::query(
                "update documents set heads = $1, projected_heads = $1, projected_seq = seq
                 where id = $2 and seq = $3",
            )
            .bind(&heads)
            .bind(id.to_string())
            .bind(seq)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if moved == 0 {
                // Dropping the transaction rolls it back.
                return Ok(false);
            }
            projection::write(&mut tx, plan).await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    fn load_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
    ) -> BoxFuture<'a, Result<Option<Vec<u8>>, StoreError>> {
        Box::pin(async move {
            Ok(sqlx::query_scalar(
                "select state from sync_states where document_id = $1 and storage_id = $2",
            )
            .bind(id.to_string())
            .bind(key)
            .fetch_optional(self.every_branch())
            .await?)
        })
    }

    fn save_sync_state<'a>(
        &'a self,
        id: DocumentId,
        key: &'a str,
        state: &'a [u8],
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async move {
            let mut tx = self.begin_write().await?;
            upsert_sync_state(&mut tx, &id.to_string(), key, state, now_ms()).await?;
            tx.commit().await?;
            Ok(())
        })
    }
}

async fn upsert_sync_state(
    tx: &mut super::Tx,
    document: &str,
    key: &str,
    state: &[u8],
    now: i64,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "insert into sync_states (document_id, storage_id, state, updated_at) values ($1, $2, $3, $4)
         on conflict (document_id, storage_id) do update set state = excluded.state, updated_at = excluded.updated_at",
    )
    .bind(document)
    .bind(key)
    .bind(state)
    .bind(now)
    .execute(&mut **tx)
    .await?;
    // Keys are "{device}/{storage id}" (`hub::sync_state_key`), so a
    // device's keys are the range ["{device}/", "{device}0"): a range of
    // the primary key, cheap whatever the table holds.
    let Some((device, _)) = key.split_once('/') else {
        return Ok(());
    };
    let (from, to) = (format!("{device}/"), format!("{device}0"));
    sqlx::query(
        "delete from sync_states
         where document_id = $1 and storage_id >= $2 and storage_id < $3
           and storage_id not in (
             select storage_id from sync_states
             where document_id = $1 and storage_id >= $2 and storage_id < $3
             order by storage_id = $4 desc, updated_at desc
             limit $5)",
    )
    .bind(document)
    .bind(&from)
    .bind(&to)
    .bind(key)
    .bind(SYNC_STATES_PER_DEVICE_AND_DOCUMENT)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

impl Store {
    /// Documents whose projection marker is behind their stored heads (or
    /// was never set): the ones to re-project at start.
    pub async fn documents_to_reproject(&self) -> Result<Vec<DocumentId>, StoreError> {
        sqlx::query_scalar::<_, String>(
            "select id from documents
             where heads is null or projected_heads is null or heads <> projected_heads
                or projected_seq < seq
             order by id",
        )
        .fetch_all(self.every_branch())
        .await?
        .iter()
        .map(|id| parse_column(id, "document id"))
        .collect()
    }

    /// Documents with stored changes their projected rows do not count
    /// yet. (A document nothing was written to since its genesis has no
    /// heads and no records: [`Store::documents_to_reproject`] lists it,
    /// but no figure lags.)
    pub async fn lagging_projections(&self) -> Result<u64, StoreError> {
        let lagging: i64 = sqlx::query_scalar(
            "select count(*) from documents
             where (heads is not null and (projected_heads is null or heads <> projected_heads))
                or projected_seq < seq",
        )
        .fetch_one(self.every_branch())
        .await?;
        Ok(u64::try_from(lagging).unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    //! The chunk loader under fuzzing (issue 15): bytes from storage that a
    //! bad disk, a bad restore or a bug changed. No input panics; a document
    //! that loads is one Automerge accepted.

    use automerge::transaction::Transactable;
    use doorstep_protocol::TenantId;
    use doorstep_protocol::mutation::{Mutation, mutate};
    use doorstep_protocol::schema::log::{Visit, VisitKind};
    use doorstep_protocol::schema::{DocumentKind, RecordId, genesis, write_record};
    use doorstep_protocol::{Date, Fen};
    use proptest::prelude::*;

    use super::*;

    /// A log with a snapshot (genesis and some visits) and incremental
    /// changes after it, as the store keeps them.
    fn stored() -> StoredChunks {
        let branch = TenantId::from_uuid(uuid::Uuid::from_u128(3));
        let mut doc = genesis(
            branch,
            DocumentKind::MonthlyLog("2026-11".parse().expect("month")),
        );
        doc.set_actor(ActorId::random());
        let visit = |doc: &mut automerge::Automerge, n: u8| {
            let mut tx = doc.transaction();
            let member = RecordId::new_v7();
            let record = Visit {
                date: Date::from_ymd(2026, 11, 1 + n % 28).expect("date"),
                member_id: member,
                kind: VisitKind::Routine,
                visitors: ["志愿者".to_owned()].into_iter().collect(),
                aid_cash: Fen::from_yuan(i64::from(n)),
                aid_goods: Fen::ZERO,
                goods_description: None,
                notes: Some(format!("第{n}次")),
                follow_up: None,
                recorded_by: None,
            };
            write_record(&mut tx, RecordId::new_v7(), &record).expect("write");
            tx.put(automerge::ROOT, "touched", i64::from(n))
                .expect("put");
            tx.commit();
        };
        for n in 0..4 {
            visit(&mut doc, n);
        }
        let snapshot = doc.save();
        let heads = doc.get_heads();
        for n in 4..8 {
            visit(&mut doc, n);
        }
        let incrementals: Vec<Vec<u8>> = doc
            .get_changes(&heads)
            .into_iter()
            .map(|mut c| c.bytes().to_vec())
            .collect();
        let mut chunks = vec![snapshot];
        chunks.extend(incrementals);
        StoredChunks {
            seq: 0,
            keys: chunks.iter().map(|_| String::new()).collect(),
            snapshot_bytes: 0,
            incremental_bytes: 0,
            snapshots: 1,
            device_actors: Default::default(),
            chunks,
        }
    }

    fn mutation() -> impl Strategy<Value = Mutation> {
        prop_oneof![
            3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Set(i, b)),
            3 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
            1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
            1 => any::<usize>().prop_map(Mutation::Remove),
            1 => any::<usize>().prop_map(Mutation::Truncate),
        ]
    }

    fn id() -> DocumentId {
        DocumentId::from_bytes([9; 16])
    }

    #[test]
    fn the_unmutated_chunks_load() {
        let doc = stored().load(id()).expect("loads");
        assert_eq!(doc.get_changes(&[]).len(), 9, "genesis and eight visits");
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

        #[test]
        fn mutated_chunks_load_or_fail_but_never_panic(
            which in any::<usize>(),
            mutations in proptest::collection::vec(mutation(), 1..6),
        ) {
            let mut stored = stored();
            let which = which % stored.chunks.len();
            mutate(&mut stored.chunks[which], &mutations);
            let _ = stored.load(id());
        }

        #[test]
        fn chunks_lost_reordered_or_doubled_never_panic(
            order in proptest::collection::vec(any::<usize>(), 0..12),
            snapshots in 0usize..3,
        ) {
            let whole = stored();
            let chunks = order.iter().map(|i| whole.chunks[i % whole.chunks.len()].clone()).collect();
            let stored = StoredChunks { chunks, snapshots, ..whole };
            let _ = stored.load(id());
        }
    }
}

#[cfg(test)]
mod numbering {
    //! Commit numbers, on whichever backend the tests run on: what lets a
    //! node read exactly the changes other nodes stored, and keeps a node
    //! that was behind from storing changes checked without theirs.

    use automerge::ReadDoc;
    use automerge::transaction::Transactable;
    use doorstep_protocol::DocumentId;
    use doorstep_protocol::keeper::NewChange;

    use super::*;
    use crate::store::testing::test_location;
    use crate::tenancy::Level;

    fn change(n: i64) -> NewChange {
        let mut doc = automerge::Automerge::new();
        let mut tx = doc.transaction();
        tx.put(automerge::ROOT, "n", n).expect("put");
        tx.commit();
        let change = doc.get_changes(&[]).pop().expect("a change").clone();
        NewChange {
            hash: change.hash(),
            actor: change.actor_id().clone(),
            bytes: change.raw_bytes().to_vec(),
        }
    }

    fn commit<'a>(
        id: DocumentId,
        device: doorstep_protocol::DeviceId,
        changes: &'a [NewChange],
        plan: &'a ProjectionPlan,
        known_seq: i64,
    ) -> Commit<'a> {
        Commit {
            document: id,
            device,
            changes,
            actors: &[],
            heads: &[],
            projection: Some(plan),
            sync_state: None,
            known_seq,
            whole_projection: false,
        }
    }

    /// A store on a fresh database, and the roster of a branch in it.
    async fn roster(dir: &std::path::Path) -> (Store, DocumentId) {
        let store = Store::open_at(&test_location(dir).await)
            .await
            .expect("open");
        let district = store
            .create_tenant(None, Level::District, "d")
            .await
            .expect("district");
        let sub = store
            .create_tenant(Some(district.id), Level::SubDistrict, "s")
            .await
            .expect("sub");
        let branch = store
            .create_tenant(Some(sub.id), Level::Branch, "b")
            .await
            .expect("branch");
        (store, DocumentId::roster(branch.id))
    }

    /// A second node: another store (its own connections) on `store`'s
    /// database.
    async fn other_node(store: &Store) -> Store {
        let location = match store.backend() {
            crate::store::Backend::Sqlite { path } => crate::store::Location::Sqlite(path.clone()),
            crate::store::Backend::Postgres => crate::store::Location::Postgres(
                store.postgres_url().expect("a PostgreSQL store has a URL"),
            ),
        };
        Store::open_at(&location).await.expect("second node")
    }

    /// Commits `changes` one message each, as a node does: from the
    /// number it holds, reading what other nodes stored whenever it is
    /// behind. The numbers its commits got.
    async fn commit_each(store: &Store, id: DocumentId, changes: &[NewChange]) -> Vec<i64> {
        let device = doorstep_protocol::DeviceId::new_v7();
        let plan = ProjectionPlan::default();
        let mut known = store.load(id).await.expect("load").seq;
        let mut numbers = Vec::new();
        for change in changes {
            let one = std::slice::from_ref(change);
            loop {
                match store.commit(commit(id, device, one, &plan, known)).await {
                    Ok(committed) => {
                        known = committed.seq;
                        numbers.push(committed.seq);
                        break;
                    }
                    Err(CommitError::Store(StoreError::Behind)) => {
                        known = store.load_after(id, known).await.expect("catch up").seq;
                    }
                    Err(e) => panic!("commit failed: {e}"),
                }
            }
        }
        numbers
    }

    #[tokio::test]
    async fn commits_are_numbered_a_node_behind_stores_nothing_and_lagging_figures_level_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, id) = roster(dir.path()).await;
        // The change log names the device; nothing here binds an actor.
        let device = doorstep_protocol::DeviceId::new_v7();
        let plan = ProjectionPlan::default();

        let before = store.load(id).await.expect("load");
        let (one, two, three) = ([change(1)], [change(2)], [change(3)]);
        let first = store
            .commit(commit(id, device, &one, &plan, before.seq))
            .await
            .expect("first");
        assert_eq!(first.seq, before.seq + 1);
        assert!(first.projected);

        // Made from a document behind the stored number (another node
        // committed first): checked against a document lacking that
        // commit, so nothing of it is stored.
        let refused = store
            .commit(commit(id, device, &two, &plan, before.seq))
            .await;
        assert!(matches!(
            refused,
            Err(CommitError::Store(StoreError::Behind))
        ));
        assert!(
            store
                .load_after(id, first.seq)
                .await
                .expect("none")
                .chunks
                .is_empty()
        );

        // Stored without a plan: numbered, the figures left behind.
        let mut unplanned = commit(id, device, &two, &plan, first.seq);
        unplanned.projection = None;
        let second = store.commit(unplanned).await.expect("second");
        assert_eq!(second.seq, first.seq + 1);
        assert!(!second.projected);
        let row = store.document(id).await.expect("row").expect("stored");
        assert!(row.projection_lags());

        // A node holding the first commit reads just what came after it.
        let after = store.load_after(id, first.seq).await.expect("load after");
        assert_eq!(after.seq, second.seq);
        assert_eq!(after.chunks, vec![two[0].bytes.clone()]);
        assert!(
            store
                .load_after(id, second.seq)
                .await
                .expect("none")
                .chunks
                .is_empty()
        );

        // A catch-up made before a newer commit is refused; at the
        // document's number it brings the figures level.
        let third = store
            .commit(commit(id, device, &three, &plan, second.seq))
            .await
            .expect("third");
        assert!(
            !third.projected,
            "a plan of the touched records cannot level figures that lag"
        );
        assert!(
            !store
                .reproject(id, &[], &plan, second.seq)
                .await
                .expect("stale")
        );
        assert!(
            store
                .reproject(id, &[], &plan, third.seq)
                .await
                .expect("current")
        );
        let row = store.document(id).await.expect("row").expect("stored");
        assert!(!row.projection_lags());

        // A compaction takes the current number: nobody holding everything
        // rereads it, a node behind it reads it in place of what it folds.
        let snapshot = b"snapshot".to_vec();
        let folded: Vec<String> = [&one, &two].iter().map(|c| c[0].hash.to_string()).collect();
        store
            .compact(id, &snapshot, &folded)
            .await
            .expect("compact");
        assert!(
            store
                .load_after(id, third.seq)
                .await
                .expect("none")
                .chunks
                .is_empty()
        );
        let behind = store.load_after(id, first.seq).await.expect("behind");
        assert_eq!(behind.snapshots, 1);
        assert!(behind.chunks.contains(&snapshot));
        assert!(behind.chunks.contains(&three[0].bytes));
    }

    /// Two nodes commit to one document at once, as fast as they can:
    /// every commit is stored, the numbers run on from the document's with
    /// no gap and no repeat, and each node's own numbers rise.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn two_nodes_writing_one_document_store_every_commit_numbered_without_gaps() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (node1, id) = roster(dir.path()).await;
        let node2 = other_node(&node1).await;
        let before = node1.load(id).await.expect("load").seq;
        let ones: Vec<NewChange> = (0..25).map(change).collect();
        let twos: Vec<NewChange> = (100..125).map(change).collect();
        let (first, second) = tokio::join!(
            commit_each(&node1, id, &ones),
            commit_each(&node2, id, &twos)
        );
        for numbers in [&first, &second] {
            assert!(numbers.windows(2).all(|w| w[0] < w[1]), "{numbers:?}");
        }
        let mut all: Vec<i64> = first.iter().chain(&second).copied().collect();
        all.sort_unstable();
        let expected: Vec<i64> = (before + 1..=before + 50).collect();
        assert_eq!(all, expected, "one number per commit, none skipped");
        let stored = node1.load_after(id, before).await.expect("load after");
        assert_eq!(stored.seq, before + 50);
        let doc = stored.load(id).expect("loads");
        for change in ones.iter().chain(&twos) {
            assert!(
                doc.get_change_by_hash(&change.hash).is_some(),
                "every commit is stored"
            );
        }
        // The slow poll's reading of it; a document never stored is absent.
        let unknown = DocumentId::roster(doorstep_protocol::TenantId::new_v7());
        let numbers = node2
            .document_numbers(&[unknown, id])
            .await
            .expect("numbers");
        assert_eq!(numbers.len(), 1);
        assert_eq!((numbers[0].id, numbers[0].seq), (id, before + 50));
    }

    /// The trap of a global cursor: a transaction that took its number
    /// first commits last, and a reader that read up to the numbers it saw
    /// skips it. Here the number is taken under the document's row lock,
    /// so a second commit waits for the first, and is refused when it was
    /// made without it: a reader misses nothing, whenever it reads.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_earlier_transaction_that_commits_last_is_not_skipped() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (node1, id) = roster(dir.path()).await;
        let node2 = other_node(&node1).await;
        let before = node1.load(id).await.expect("load").seq;

        // The first transaction takes its number and holds it, uncommitted.
        let early = change(1);
        let mut slow = node1.begin_write().await.expect("begin");
        let number: i64 =
            sqlx::query_scalar("update documents set seq = seq + 1 where id = $1 returning seq")
                .bind(id.to_string())
                .fetch_one(&mut *slow)
                .await
                .expect("number");
        assert_eq!(number, before + 1);
        sqlx::query(
            "insert into chunks (document_id, kind, hash, bytes, created_at, doc_seq)
             values ($1, 'incremental', $2, $3, 0, $4)",
        )
        .bind(id.to_string())
        .bind(early.hash.to_string())
        .bind(&early.bytes)
        .bind(number)
        .execute(&mut *slow)
        .await
        .expect("chunk");

        // A second node commits meanwhile: it cannot get ahead.
        let late = [change(2)];
        let second = tokio::spawn({
            let node2 = node2.clone();
            let late = late.clone();
            async move {
                let plan = ProjectionPlan::default();
                let device = doorstep_protocol::DeviceId::new_v7();
                node2
                    .commit(commit(id, device, &late, &plan, before))
                    .await
                    .map(|c| c.seq)
            }
        });
        let reader = node2.load_after(id, before).await.expect("read");
        assert_eq!(reader.seq, before, "nothing committed yet");
        assert!(reader.chunks.is_empty());
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        assert!(
            !second.is_finished(),
            "the later commit waits for the earlier"
        );

        slow.commit().await.expect("commit the earlier");
        let refused = second.await.expect("joined");
        assert!(
            matches!(refused, Err(CommitError::Store(StoreError::Behind))),
            "made without the earlier commit, the later one stores nothing: {refused:?}"
        );
        let numbers = commit_each(&node2, id, &late).await;
        assert_eq!(numbers, vec![before + 2]);

        // The reader, after the number it saw, gets both, in number order.
        let after = node2.load_after(id, reader.seq).await.expect("read again");
        assert_eq!(after.seq, before + 2);
        assert_eq!(
            after.chunks,
            vec![early.bytes.clone(), late[0].bytes.clone()]
        );
    }

    /// One node compacts a document again and again while another keeps
    /// committing to it: every compaction deletes only the chunks it
    /// folded, so every change is still there at the end.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn compaction_on_one_node_while_another_commits_loses_nothing() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (node1, id) = roster(dir.path()).await;
        let node2 = other_node(&node1).await;
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let changes: Vec<NewChange> = (0..40).map(change).collect();
        let done = AtomicBool::new(false);
        let made = AtomicUsize::new(0);
        let compactions = async {
            while !done.load(Ordering::Acquire) {
                let held = node1.load(id).await.expect("load");
                let snapshot = held.load(id).expect("loads").save();
                node1
                    .compact(id, &snapshot, &held.keys)
                    .await
                    .expect("compact");
                made.fetch_add(1, Ordering::AcqRel);
                tokio::task::yield_now().await;
            }
        };
        // In batches, each followed by compactions that began after it did:
        // the interleaving is certain, not a matter of timing.
        let commits = async {
            let mut numbers = Vec::new();
            for batch in changes.chunks(10) {
                let before = made.load(Ordering::Acquire);
                numbers.extend(commit_each(&node2, id, batch).await);
                while made.load(Ordering::Acquire) < before + 2 {
                    tokio::task::yield_now().await;
                }
            }
            done.store(true, Ordering::Release);
            numbers
        };
        let ((), numbers) = tokio::join!(compactions, commits);
        assert_eq!(numbers.len(), changes.len());
        assert!(made.load(Ordering::Acquire) >= 8);
        let doc = node1.load(id).await.expect("load").load(id).expect("loads");
        for change in &changes {
            assert!(
                doc.get_change_by_hash(&change.hash).is_some(),
                "a change was lost"
            );
        }
    }
}
