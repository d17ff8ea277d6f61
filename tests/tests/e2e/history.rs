//! A phone that joins late gets the roster and two months at first; the
//! older months it learns of and fetches, so a member's history is whole.

use std::time::Duration;

use doorstep_client::{Fen, MemberKind, NewMember, NewVisit, VisitKind};
use doorstep_protocol::Month;
use doorstep_tests::{TestServer, sdk_device};

#[tokio::test]
async fn a_fresh_device_learns_of_older_months_and_fetches_a_members_whole_history()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let branch = district.yingfeng.id;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let old = sdk_device(
        &server.store,
        &server.http_url(),
        branch,
        dir_a.path(),
        |_| {},
    )
    .await?;
    let member = old
        .add_member(NewMember {
            name: "刘桂英".into(),
            kinds: [MemberKind::Hardship].into(),
            ..NewMember::default()
        })
        .await?;
    let now = time::OffsetDateTime::now_utc();
    let mut month = Month::new(now.year(), now.month() as u8).expect("this month");
    let mut months = Vec::new();
    for i in 0..6 {
        months.push(month);
        old.record_visit(NewVisit {
            date: format!("{month}-01").parse()?,
            member_id: member,
            kind: VisitKind::HolidayCondolence,
            visitors: vec!["王志愿".into()],
            aid_cash: Fen::from_yuan(10 * (i + 1)),
            aid_goods: Fen::ZERO,
            goods_description: None,
            notes: None,
            follow_up: None,
        })
        .await?;
        month = month.previous();
    }
    old.sync_now().await?;
    assert_eq!(old.pending_changes().await?, 0);

    let fresh = sdk_device(
        &server.store,
        &server.http_url(),
        branch,
        dir_b.path(),
        |_| {},
    )
    .await?;
    fresh.sync_now().await?;
    let partial = fresh.member_history(member).await?;
    assert_eq!(partial.visits.len(), 2, "the current and previous month");
    assert_eq!(partial.missing_months, months[2..].to_vec(), "newest first");

    let fetched = fresh.fetch_history(Duration::from_secs(60)).await?;
    assert_eq!(fetched.fetched, months[2..].to_vec());
    assert!(fetched.missing.is_empty());
    let whole = fresh.member_history(member).await?;
    assert_eq!(whole.visits.len(), 6);
    assert_eq!(whole.aid_total, Fen::from_yuan(10 + 20 + 30 + 40 + 50 + 60));
    assert!(whole.missing_months.is_empty());
    // Nothing left: a second fetch brings nothing.
    assert!(
        fresh
            .fetch_history(Duration::from_secs(60))
            .await?
            .fetched
            .is_empty()
    );
    Ok(())
}
