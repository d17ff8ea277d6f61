//! Projection against a real SQLite store: each test builds documents the
//! way devices do, applies them the way the hub does (sync messages, with
//! the patches of the apply), and reads the rows and the rollups back.

use std::collections::BTreeSet;

use automerge::sync::{self, SyncDoc};
use automerge::transaction::Transactable;
use automerge::{ActorId, Automerge, ObjType, Patch, PatchLog, ROOT, ReadDoc};
use doorstep_protocol::schema::log::{Visit, VisitKind};
use doorstep_protocol::schema::roster::{Member, Team, TeamMember};
use doorstep_protocol::schema::{
    DocumentKind, NOT_A_RECORD_KEY, RecordId, delete_record, genesis, write_record,
};
use doorstep_protocol::{DocumentId, Fen, Month};
use sqlx::Row;

use super::*;
use crate::rollup::{Period, rollup};
use crate::store::testing::test_location;
use crate::store::{Store, Tenant};
use crate::tenancy::Level;

struct Fixture {
    store: Store,
    district: Tenant,
    branch: Tenant,
    _dir: tempfile::TempDir,
}

async fn fixture() -> Fixture {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Store::open_at(&test_location(dir.path()).await)
        .await
        .expect("open");
    let district = store
        .create_tenant(None, Level::District, "燕山工委")
        .await
        .expect("district");
    let sub = store
        .create_tenant(Some(district.id), Level::SubDistrict, "向阳街道")
        .await
        .expect("sub-district");
    let branch = store
        .create_tenant(Some(sub.id), Level::Branch, "迎丰里")
        .await
        .expect("branch");
    Fixture {
        store,
        district,
        branch,
        _dir: dir,
    }
}

fn month(s: &str) -> Month {
    s.parse().expect("month")
}

/// The server's copy of a document and a device's copy, both from genesis.
struct Pair {
    source: Source,
    server: Automerge,
    device: Automerge,
}

impl Pair {
    fn new(f: &Fixture, kind: DocumentKind) -> Pair {
        let document = match kind {
            DocumentKind::Roster => DocumentId::roster(f.branch.id),
            DocumentKind::MonthlyLog(m) => DocumentId::monthly_log(f.branch.id, m),
        };
        let server = genesis(f.branch.id, kind);
        let device = server.fork().with_actor(ActorId::from([7; 16]));
        Pair {
            source: Source {
                document,
                branch: f.branch.id,
                kind,
            },
            server,
            device,
        }
    }

    fn edit(&mut self, f: impl FnOnce(&mut automerge::transaction::Transaction<'_>)) {
        let mut tx = self.device.transaction();
        f(&mut tx);
        tx.commit();
    }

    /// Syncs the device's edits to the server, returning the patches of the
    /// server's applies, as the hub gets them.
    fn sync(&mut self) -> Vec<Patch> {
        let (mut at_server, mut at_device) = (sync::State::new(), sync::State::new());
        let mut log = PatchLog::active();
        loop {
            let to_server = self.device.generate_sync_message(&mut at_device);
            let sent = to_server.is_some();
            if let Some(m) = to_server {
                self.server
                    .receive_sync_message_log_patches(&mut at_server, m, &mut log)
                    .expect("server receives");
            }
            let to_device = self.server.generate_sync_message(&mut at_server);
            let answered = to_device.is_some();
            if let Some(m) = to_device {
                self.device
                    .receive_sync_message(&mut at_device, m)
                    .expect("device receives");
            }
            if !sent && !answered {
                break;
            }
        }
        self.server.make_patches(&mut log)
    }

    /// Syncs and projects what the sync changed, in one transaction.
    async fn sync_and_project(&mut self, store: &Store) -> Scope {
        let scope = scope_of(&self.sync());
        let plan = plan(&self.server, self.source, &scope);
        let mut tx = store.begin_write().await.expect("begin");
        write(&mut tx, &plan).await.expect("write");
        tx.commit().await.expect("commit");
        scope
    }
}

fn visit(date: &str, member: RecordId, cash: i64) -> Visit {
    Visit {
        date: date.parse().expect("date"),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: BTreeSet::from(["志愿者".to_owned()]),
        aid_cash: Fen(cash),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
        recorded_by: None,
    }
}

async fn strings(store: &Store, sql: &str) -> Vec<String> {
    let mut got: Vec<String> = sqlx::query(sql)
        .fetch_all(store.every_branch())
        .await
        .expect("query")
        .iter()
        .map(|r| r.try_get::<String, _>(0).expect("text column"))
        .collect();
    got.sort();
    got
}

async fn count(store: &Store, sql: &str) -> i64 {
    sqlx::query_scalar(sql)
        .fetch_one(store.every_branch())
        .await
        .expect("count")
}

fn sorted(ids: &[RecordId]) -> Vec<String> {
    let mut ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
    ids.sort();
    ids
}

#[tokio::test]
async fn a_collection_replaced_or_deleted_at_the_root_leaves_no_stale_rows() {
    let f = fixture().await;
    let mut log = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let member = RecordId::new_v7();
    let (a, b, c) = (RecordId::new_v7(), RecordId::new_v7(), RecordId::new_v7());
    log.edit(|tx| {
        write_record(tx, a, &visit("2026-11-03", member, 100)).expect("write");
        write_record(tx, b, &visit("2026-11-04", member, 200)).expect("write");
    });
    log.sync_and_project(&f.store).await;
    assert_eq!(
        strings(&f.store, "select record_id from visit_rows").await,
        sorted(&[a, b])
    );

    // A device puts a fresh `visits` map over the old one, with one visit.
    log.edit(|tx| {
        tx.put_object(ROOT, "visits", ObjType::Map).expect("put");
        write_record(tx, c, &visit("2026-11-05", member, 300)).expect("write");
    });
    let scope = log.sync_and_project(&f.store).await;
    assert!(scope.whole_collections.contains("visits"), "{scope:?}");
    assert_eq!(
        strings(&f.store, "select record_id from visit_rows").await,
        sorted(&[c])
    );

    // And deletes the collection outright.
    log.edit(|tx| tx.delete(ROOT, "visits").expect("delete"));
    log.sync_and_project(&f.store).await;
    assert_eq!(count(&f.store, "select count(*) from visit_rows").await, 0);
}

#[tokio::test]
async fn the_same_record_id_in_two_monthly_logs_is_two_rows() {
    let f = fixture().await;
    let mut november = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let mut december = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-12")));
    let (member, id) = (RecordId::new_v7(), RecordId::new_v7());
    november.edit(|tx| write_record(tx, id, &visit("2026-11-05", member, 1_000)).expect("write"));
    december.edit(|tx| write_record(tx, id, &visit("2026-12-05", member, 2_000)).expect("write"));
    november.sync_and_project(&f.store).await;
    december.sync_and_project(&f.store).await;

    let year = Period::year(2026).expect("year");
    let figures = rollup(&f.store, &f.district, year).await.expect("rollup");
    assert_eq!(figures.total.visits, 2);
    assert_eq!(figures.total.aid_cash_fen, 3_000);
    assert_eq!(figures.total.households_visited, 1);

    // Deleting it from one log leaves the other's row alone.
    november.edit(|tx| {
        delete_record::<Visit, _>(tx, id).expect("delete");
    });
    november.sync_and_project(&f.store).await;
    let figures = rollup(&f.store, &f.district, year).await.expect("rollup");
    assert_eq!(figures.total.visits, 1);
    assert_eq!(figures.total.aid_cash_fen, 2_000);
    assert_eq!(
        strings(&f.store, "select document_id from visit_rows").await,
        vec![december.source.document.to_string()]
    );
}

#[tokio::test]
async fn records_keyed_in_a_non_canonical_form_are_listed_invalid_not_counted() {
    let f = fixture().await;
    let mut log = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let (member, good, id) = (RecordId::new_v7(), RecordId::new_v7(), RecordId::new_v7());
    let keys = [
        id.to_string().to_uppercase(),
        format!("{{{id}}}"),
        format!("urn:uuid:{id}"),
        id.as_uuid().simple().to_string(),
        uuid::Uuid::new_v4().to_string(),
    ];
    log.edit(|tx| {
        write_record(tx, good, &visit("2026-11-05", member, 100)).expect("write");
        let (_, visits) = tx.get(ROOT, "visits").expect("get").expect("visits");
        for key in &keys {
            let v = tx.put_object(&visits, key, ObjType::Map).expect("put");
            tx.put(&v, "date", "2026-11-06").expect("put");
            tx.put(&v, "member_id", member.to_string()).expect("put");
            tx.put(&v, "kind", "routine").expect("put");
            tx.put(&v, "aid_cash_fen", 500_i64).expect("put");
        }
    });
    log.sync_and_project(&f.store).await;

    assert_eq!(
        strings(&f.store, "select record_id from visit_rows").await,
        sorted(&[good])
    );
    let mut expected: Vec<String> = keys.to_vec();
    expected.sort();
    assert_eq!(
        strings(&f.store, "select record_key from invalid_rows").await,
        expected
    );
    assert_eq!(
        strings(&f.store, "select distinct problems from invalid_rows").await,
        vec![NOT_A_RECORD_KEY.to_owned()]
    );
    let listed = crate::rollup::branch_invalid(&f.store, f.branch.id)
        .await
        .expect("listing");
    assert_eq!(listed.len(), keys.len());
    let figures = rollup(&f.store, &f.district, Period::year(2026).expect("year"))
        .await
        .expect("rollup");
    assert_eq!(figures.total.visits, 1);
    assert_eq!(figures.total.aid_cash_fen, 100);

    // Fixing one (deleting it) drops its listing.
    log.edit(|tx| {
        let (_, visits) = tx.get(ROOT, "visits").expect("get").expect("visits");
        tx.delete(&visits, keys[0].as_str()).expect("delete");
    });
    log.sync_and_project(&f.store).await;
    assert_eq!(
        count(&f.store, "select count(*) from invalid_rows").await,
        keys.len() as i64 - 1
    );
}

#[tokio::test]
async fn aid_too_large_to_sum_is_listed_invalid_and_the_district_rollup_still_answers() {
    let f = fixture().await;
    let mut log = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let member = RecordId::new_v7();
    let (huge, big, fine) = (RecordId::new_v7(), RecordId::new_v7(), RecordId::new_v7());
    log.edit(|tx| {
        write_record(tx, huge, &visit("2026-11-03", member, i64::MAX)).expect("write");
        write_record(
            tx,
            big,
            &visit("2026-11-04", member, Fen::MAX_AMOUNT.as_i64() + 1),
        )
        .expect("write");
        write_record(tx, fine, &visit("2026-11-05", member, 5_000)).expect("write");
    });
    log.sync_and_project(&f.store).await;

    let figures = rollup(&f.store, &f.district, Period::year(2026).expect("year"))
        .await
        .expect("the district rollup answers");
    assert_eq!(figures.total.visits, 1);
    assert_eq!(figures.total.aid_cash_fen, 5_000);
    assert_eq!(
        strings(&f.store, "select record_key from invalid_rows").await,
        sorted(&[huge, big])
    );
    assert!(
        strings(&f.store, "select problems from invalid_rows")
            .await
            .iter()
            .all(|p| p.contains("cash aid is over")),
    );
}

#[tokio::test]
async fn team_people_follow_their_team_and_their_document() {
    let f = fixture().await;
    let mut roster = Pair::new(&f, DocumentKind::Roster);
    let (member, team) = (RecordId::new_v7(), RecordId::new_v7());
    let (p1, p2) = (RecordId::new_v7(), RecordId::new_v7());
    let people = |ids: &[RecordId]| {
        ids.iter()
            .map(|id| {
                (
                    *id,
                    TeamMember {
                        member_id: (*id == p1).then_some(member),
                        resident_name: (*id != p1).then(|| "居民".to_owned()),
                        backbone: *id == p1,
                    },
                )
            })
            .collect()
    };
    let volunteers = |ids: &[RecordId]| Team {
        name: "敬老队".into(),
        category: "敬老".into(),
        founded_on: None,
        people: people(ids),
    };
    roster.edit(|tx| {
        write_record(
            tx,
            member,
            &Member {
                name: "王".into(),
                ..Member::default()
            },
        )
        .expect("write");
        write_record(tx, team, &volunteers(&[p1, p2])).expect("write");
    });
    roster.sync_and_project(&f.store).await;
    let year = Period::year(2026).expect("year");
    let figures = rollup(&f.store, &f.district, year).await.expect("rollup");
    assert_eq!(
        (figures.total.teams, figures.total.team_people),
        (1, 2),
        "{figures:?}"
    );
    assert_eq!(figures.total.team_backbone_members, 1);
    assert_eq!(
        strings(
            &f.store,
            "select distinct document_id from team_people_rows"
        )
        .await,
        vec![roster.source.document.to_string()]
    );

    // A person leaves the team: only that person's row goes.
    roster.edit(|tx| {
        let (_, teams) = tx.get(ROOT, "teams").expect("get").expect("teams");
        let (_, t) = tx
            .get(&teams, team.to_string())
            .expect("get")
            .expect("team");
        let (_, p) = tx.get(&t, "people").expect("get").expect("people");
        tx.delete(&p, p2.to_string()).expect("delete");
    });
    roster.sync_and_project(&f.store).await;
    assert_eq!(
        strings(&f.store, "select person_id from team_people_rows").await,
        sorted(&[p1])
    );

    // The teams map is replaced at the root: the team and its people go.
    roster.edit(|tx| {
        tx.put_object(ROOT, "teams", ObjType::Map).expect("put");
    });
    roster.sync_and_project(&f.store).await;
    assert_eq!(count(&f.store, "select count(*) from team_rows").await, 0);
    assert_eq!(
        count(&f.store, "select count(*) from team_people_rows").await,
        0
    );
    assert_eq!(count(&f.store, "select count(*) from member_rows").await, 1);
}

#[tokio::test]
async fn a_replayed_plan_writes_the_same_rows() {
    let f = fixture().await;
    let mut log = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let member = RecordId::new_v7();
    log.edit(|tx| {
        write_record(tx, RecordId::new_v7(), &visit("2026-11-03", member, 100)).expect("write");
        write_record(tx, RecordId::new_v7(), &visit("2026-10-03", member, 100)).expect("write");
    });
    log.sync();
    let plan = plan(&log.server, log.source, &Scope::everything(log.source.kind));
    for _ in 0..2 {
        let mut tx = f.store.begin_write().await.expect("begin");
        write(&mut tx, &plan).await.expect("write");
        tx.commit().await.expect("commit");
    }
    assert_eq!(count(&f.store, "select count(*) from visit_rows").await, 1);
    assert_eq!(
        count(&f.store, "select count(*) from invalid_rows").await,
        1
    );
}

#[tokio::test]
async fn a_large_document_is_written_in_chunks_under_the_parameter_limit() {
    let f = fixture().await;
    let mut log = Pair::new(&f, DocumentKind::MonthlyLog(month("2026-11")));
    let member = RecordId::new_v7();
    // Ten bound values a visit row: 3,500 rows is more than one statement holds.
    let n = 3_500;
    log.edit(|tx| {
        for _ in 0..n {
            write_record(tx, RecordId::new_v7(), &visit("2026-11-03", member, 1)).expect("write");
        }
    });
    log.sync_and_project(&f.store).await;
    assert_eq!(count(&f.store, "select count(*) from visit_rows").await, n);
    let figures = rollup(&f.store, &f.district, Period::year(2026).expect("year"))
        .await
        .expect("rollup");
    assert_eq!(figures.total.aid_cash_fen, n);
}

#[test]
fn an_empty_scope_plans_nothing_and_unknown_collections_are_ignored() {
    let branch = doorstep_protocol::TenantId::new_v7();
    let kind = DocumentKind::Roster;
    let mut doc = genesis(branch, kind).with_actor(ActorId::from([7; 16]));
    let source = Source {
        document: DocumentId::roster(branch),
        branch,
        kind,
    };
    assert!(plan(&doc, source, &Scope::default()).is_empty());
    let before = doc.get_heads();
    let mut tx = doc.transaction();
    // A log's collection in a roster, and a root key that is no collection.
    let visits = tx.put_object(ROOT, "visits", ObjType::Map).expect("put");
    let v = tx
        .put_object(&visits, RecordId::new_v7().to_string(), ObjType::Map)
        .expect("put");
    tx.put(&v, "date", "2026-11-01").expect("put");
    tx.put(ROOT, "note", "x").expect("put");
    tx.commit();
    let scope = scope_of(&doc.diff(&before, &doc.get_heads()));
    assert!(!scope.is_empty());
    assert!(plan(&doc, source, &scope).is_empty());
    assert!(!plan(&doc, source, &Scope::everything(kind)).is_empty());
}

#[tokio::test]
async fn reproject_rebuilds_from_the_stored_documents_and_drops_orphans() {
    let f = fixture().await;
    let mut roster = Pair::new(&f, DocumentKind::Roster);
    let member = RecordId::new_v7();
    roster.edit(|tx| {
        write_record(
            tx,
            member,
            &Member {
                name: "李".into(),
                ..Member::default()
            },
        )
        .expect("write");
    });
    roster.sync();
    // The stored roster is its genesis (from `create_tenant`) plus this.
    let genesis_heads = genesis(f.branch.id, DocumentKind::Roster).get_heads();
    let id = roster.source.document.to_string();
    sqlx::query(
        "insert into chunks (document_id, kind, hash, bytes, created_at) values ($1, 'incremental', 'test', $2, 1)",
    )
    .bind(&id)
    .bind(roster.server.save_after(&genesis_heads))
    .execute(f.store.every_branch())
    .await
    .expect("store the change");
    // A row of a document the store does not have.
    sqlx::query(
        "insert into member_rows (document_id, record_id, branch_id, name, household, in_post, no_post, hardship, migrant, retired)
         values ('gone', 'x', $1, 'n', 'h', 0, 0, 0, 0, 0)",
    )
    .bind(f.branch.id.to_string())
    .execute(f.store.every_branch())
    .await
    .expect("orphan");

    assert!(reproject(&f.store).await.expect("reproject") >= 1);
    assert_eq!(
        strings(&f.store, "select record_id from member_rows").await,
        sorted(&[member])
    );
    let marker: Option<String> =
        sqlx::query_scalar("select projected_heads from documents where id = $1")
            .bind(&id)
            .fetch_one(f.store.every_branch())
            .await
            .expect("marker");
    assert_eq!(
        marker,
        Some(crate::store::keeping::heads_text(
            &roster.server.get_heads()
        ))
    );
}

#[test]
fn scope_of_pins_patches_to_records_or_whole_collections() {
    let branch = doorstep_protocol::TenantId::new_v7();
    let kind = DocumentKind::MonthlyLog(month("2026-11"));
    let mut doc = genesis(branch, kind).with_actor(ActorId::from([7; 16]));
    let (a, b) = (RecordId::new_v7(), RecordId::new_v7());
    let before = doc.get_heads();
    let mut tx = doc.transaction();
    write_record(&mut tx, a, &visit("2026-11-03", RecordId::new_v7(), 1)).expect("write");
    tx.commit();
    let scope = scope_of(&doc.diff(&before, &doc.get_heads()));
    assert_eq!(
        scope.records,
        BTreeSet::from([("visits".to_owned(), a.to_string())])
    );
    assert!(scope.whole_collections.is_empty());

    // A field deep inside a record, and a list put where a collection was.
    let before = doc.get_heads();
    let mut tx = doc.transaction();
    write_record(&mut tx, b, &visit("2026-11-04", RecordId::new_v7(), 1)).expect("write");
    let (_, visits) = tx.get(ROOT, "visits").expect("get").expect("visits");
    let (_, record) = tx.get(&visits, a.to_string()).expect("get").expect("a");
    let (_, visitors) = tx.get(&record, "visitors").expect("get").expect("set");
    tx.put(&visitors, "another", true).expect("put");
    let list = tx.put_object(ROOT, "fund", ObjType::List).expect("put");
    tx.insert(&list, 0, 1_i64).expect("insert");
    tx.commit();
    let scope = scope_of(&doc.diff(&before, &doc.get_heads()));
    assert_eq!(
        scope.records,
        BTreeSet::from([
            ("visits".to_owned(), a.to_string()),
            ("visits".to_owned(), b.to_string()),
        ])
    );
    assert_eq!(scope.whole_collections, BTreeSet::from(["fund".to_owned()]));
    assert_eq!(
        Scope::everything(kind).whole_collections.len(),
        kind.collections().len()
    );
}
