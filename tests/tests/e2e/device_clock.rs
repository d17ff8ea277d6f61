//! The device bounds dates by the server's clock, learned at enrollment and
//! at every sync, not by a phone clock set to 1970 or months ahead.

use std::time::Duration;

use doorstep_client::{
    Client, ClientConfig, ClientError, DeviceClock, Fen, MemberKind, NewMember, NewVisit, RecordId,
    VisitKind,
};
use doorstep_tests::{TestServer, sdk_device, test_store_key};
use time::OffsetDateTime;

fn visit(on: OffsetDateTime, member: RecordId) -> NewVisit {
    NewVisit {
        date: format!("{:04}-{:02}-{:02}", on.year(), on.month() as u8, on.day())
            .parse()
            .expect("a date"),
        member_id: member,
        kind: VisitKind::HolidayCondolence,
        visitors: vec!["王志愿".into()],
        aid_cash: Fen::from_yuan(100),
        aid_goods: Fen::ZERO,
        goods_description: None,
        notes: None,
        follow_up: None,
    }
}

async fn member(phone: &Client) -> anyhow::Result<RecordId> {
    Ok(phone
        .add_member(NewMember {
            name: "刘桂英".into(),
            kinds: [MemberKind::Hardship].into(),
            ..NewMember::default()
        })
        .await?)
}

#[tokio::test]
async fn a_phone_clock_in_1970_records_todays_visit_after_learning_the_servers_time()
-> anyhow::Result<()> {
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let dir = tempfile::tempdir()?;
    let in_1970 = DeviceClock::from_fn(|| OffsetDateTime::UNIX_EPOCH);
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        district.yingfeng.id,
        dir.path(),
        |config| config.device_clock = in_1970.clone(),
    )
    .await?;
    let today = OffsetDateTime::now_utc();
    let id = member(&phone).await?;
    phone.record_visit(visit(today, id)).await?;
    phone.sync_now().await?;
    assert_eq!(phone.pending_changes().await?, 0);

    // Restarted with the server out of reach: the stored offset holds.
    drop(phone);
    let mut config = ClientConfig::new(dir.path(), "http://127.0.0.1:9", test_store_key());
    config.device_clock = in_1970;
    let phone = Client::open(config).await?;
    phone.record_visit(visit(today, id)).await?;
    Ok(())
}

#[tokio::test]
async fn a_phone_clock_months_ahead_refuses_a_month_the_server_would_refuse() -> anyhow::Result<()>
{
    let server = TestServer::spawn().await?;
    let district = server.district().await?;
    let dir = tempfile::tempdir()?;
    let ahead = Duration::from_secs(200 * 86_400);
    let phone = sdk_device(
        &server.store,
        &server.http_url(),
        district.yingfeng.id,
        dir.path(),
        |config| {
            config.device_clock = DeviceClock::from_fn(move || OffsetDateTime::now_utc() + ahead)
        },
    )
    .await?;
    let id = member(&phone).await?;
    // Four months ahead is within the phone's "next month" but not the
    // server's: refused before it is written, naming the field.
    let later = OffsetDateTime::now_utc() + Duration::from_secs(120 * 86_400);
    match phone.record_visit(visit(later, id)).await {
        Err(ClientError::Invalid { field, .. }) => assert_eq!(field, "date"),
        other => panic!("a month the server refuses was taken: {other:?}"),
    }
    Ok(())
}
