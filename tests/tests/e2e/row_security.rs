//! Row-level security on PostgreSQL (defense in depth): a transaction
//! scoped to one branch reads no other branch's people or documents, even
//! through SQL written by hand, and an unscoped one reads none at all.
//!
//! Needs `DOORSTEP_TEST_POSTGRES` (the test script sets it).

use doorstep_client::NewMember;
use doorstep_server::store::Location;
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, sdk_device};
use sqlx::Connection;

#[tokio::test]
async fn one_branchs_scope_reads_no_other_branchs_rows_even_by_hand() -> anyhow::Result<()> {
    let url = &doorstep_tests::postgres_database().await?;
    let database = Location::Postgres(url.clone());
    let node = {
        let database = database.clone();
        TestServer::spawn_with(move |c| c.database = database).await?
    };
    let d = node.district().await?;
    // An official (and the audit entry of their account's creation).
    let token = node
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    for (branch, name) in [
        (&d.yingfeng, "迎丰里的王"),
        (&d.fenghuangting, "凤凰亭的李"),
    ] {
        let dir = tempfile::tempdir()?;
        let phone =
            sdk_device(&node.store, &node.http_url(), branch.id, dir.path(), |_| {}).await?;
        phone
            .add_member(NewMember {
                name: name.into(),
                ..NewMember::default()
            })
            .await?;
        phone.sync_now().await?;
    }

    // A role that owns nothing, as the server should connect (owners and
    // superusers are not held to row-level security), by hand.
    let mut owner = sqlx::PgConnection::connect(url).await?;
    for statement in [
        "do $$ begin
             if not exists (select 1 from pg_roles where rolname = 'doorstep_test_app') then
                 create role doorstep_test_app login password 'app';
             end if;
         end $$",
        "grant select, insert, update, delete on all tables in schema public to doorstep_test_app",
        "grant usage on all sequences in schema public to doorstep_test_app",
    ] {
        sqlx::query(statement).execute(&mut owner).await?;
    }
    let as_app = {
        let mut parsed = url::Url::parse(url)?;
        parsed
            .set_username("doorstep_test_app")
            .map_err(|()| anyhow::anyhow!("a URL with a user"))?;
        parsed
            .set_password(Some("app"))
            .map_err(|()| anyhow::anyhow!("a URL with a password"))?;
        parsed.to_string()
    };
    let mut conn = sqlx::PgConnection::connect(&as_app).await?;
    let as_app = as_app.clone();
    let (mine, others_chunks) = names(&mut conn, d.yingfeng.path.to_string()).await?;
    assert_eq!(mine, vec!["迎丰里的王".to_owned()]);
    assert_eq!(others_chunks, 0, "no chunk of another branch's documents");
    let (district, _) = names(&mut conn, d.district.path.to_string()).await?;
    assert_eq!(district.len(), 2, "a district's scope holds both branches");
    let (none, _) = names(&mut conn, String::new()).await?;
    assert!(none.is_empty(), "an empty scope matches nothing");
    let (sub, _) = names(&mut conn, d.xiangyang.path.to_string()).await?;
    assert_eq!(
        sub,
        vec!["迎丰里的王".to_owned()],
        "a sub-district holds its branches only"
    );

    // The tables of people, codes and grants and the audit log hold to the
    // same scopes; tokens and the login throttle are the server's alone.
    let branch = d.yingfeng.path.to_string();
    for (table, unit) in [
        ("users u", "u.tenant_id"),
        ("audit a", "a.tenant_id"),
        ("enrollment_codes c", "c.branch_id"),
        ("devices v", "v.branch_id"),
    ] {
        let outside = format!(
            "select count(*) from {table} where not exists
                 (select 1 from tenants t where t.id = {unit}
                  and (t.path = $1 or t.path like $1 || '/%'))"
        );
        assert_eq!(
            count(&mut conn, &branch, &outside).await?,
            0,
            "{table}: nothing outside the branch"
        );
        let all = format!("select count(*) from {table} where $1 = $1");
        assert_eq!(
            count(&mut conn, "", &all).await?,
            0,
            "{table}: an empty scope"
        );
    }
    let all_users = "select count(*) from users where $1 = $1";
    assert!(count(&mut conn, &d.district.path.to_string(), all_users).await? >= 1);
    let audit = "select count(*) from audit where $1 = $1";
    assert!(count(&mut conn, &d.district.path.to_string(), audit).await? >= 1);
    for table in ["device_tokens", "login_known_addresses", "user_sessions"] {
        let all = format!("select count(*) from {table} where $1 = $1");
        assert!(
            count(&mut conn, "*", &all).await? >= 1,
            "{table} holds rows"
        );
        assert_eq!(
            count(&mut conn, &branch, &all).await?,
            0,
            "{table} in a branch's scope"
        );
    }

    // Writing into another branch's rows is refused in a branch's scope.
    let mut tx = conn.begin().await?;
    sqlx::query("select set_config('doorstep.scope', $1, true)")
        .bind(d.yingfeng.path.to_string())
        .execute(&mut *tx)
        .await?;
    let forged = sqlx::query(
        "insert into member_rows (document_id, record_id, branch_id, name, household, in_post, no_post, hardship, migrant, retired)
         values ('x', 'y', $1, 'forged', '', 0, 0, 0, 0, 0)",
    )
    .bind(d.fenghuangting.id.to_string())
    .execute(&mut *tx)
    .await;
    assert!(forged.is_err(), "a row outside the scope is refused");
    tx.rollback().await?;

    // A server connected as that role (the migrations were applied by the
    // owner) syncs any branch, and its reads on an official's behalf see
    // the official's unit.
    let node = TestServer::spawn_with(move |c| c.database = Location::Postgres(as_app)).await?;
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(
        &node.store,
        &node.http_url(),
        d.yingfeng.id,
        dir.path(),
        |_| {},
    )
    .await?;
    doorstep_tests::record_visit(&phone, "经由应用角色", 4_200).await?;
    phone.sync_now().await?;
    let get_as = |token: &str, path: &'static str| {
        let request = reqwest::Client::new()
            .get(format!("{}{path}", node.http_url()))
            .bearer_auth(token);
        async move {
            anyhow::Ok(
                request
                    .send()
                    .await?
                    .error_for_status()?
                    .json::<serde_json::Value>()
                    .await?,
            )
        }
    };
    let get = |path| get_as(&token, path);
    let rollup = get("/api/v1/rollups?year=2026").await?;
    // The visit's figures, read through the scoped transaction: a scope
    // that admitted nothing would give zeros.
    assert_eq!(rollup["total"]["visits"], 1, "{rollup}");
    assert_eq!(rollup["total"]["aid_cash_fen"], 4_200, "{rollup}");
    // The listings of the official's unit read through scoped
    // transactions too, and find what the unit holds.
    let users = get("/api/v1/users").await?.to_string();
    assert!(users.contains("\"district\""), "{users}");
    let devices = get("/api/v1/devices").await?;
    assert_eq!(devices.as_array().map(Vec::len), Some(3), "{devices}");
    let auditor = node
        .login_as("auditor", Role::DistrictAuditor, d.district.id)
        .await?;
    let audit = get_as(&auditor, "/api/v1/audit").await?.to_string();
    assert!(audit.contains("user.create"), "{audit}");
    Ok(())
}

/// What `sql` (a count with one parameter, the scope) counts in `scope`.
async fn count(conn: &mut sqlx::PgConnection, scope: &str, sql: &str) -> anyhow::Result<i64> {
    let mut tx = conn.begin().await?;
    sqlx::query("select set_config('doorstep.scope', $1, true)")
        .bind(scope)
        .execute(&mut *tx)
        .await?;
    let n = sqlx::query_scalar(sql)
        .bind(scope)
        .fetch_one(&mut *tx)
        .await?;
    tx.rollback().await?;
    Ok(n)
}

/// The members' names, and the chunks of other branches' documents, that a
/// transaction in `scope` reads.
async fn names(conn: &mut sqlx::PgConnection, scope: String) -> anyhow::Result<(Vec<String>, i64)> {
    let mut tx = conn.begin().await?;
    sqlx::query("select set_config('doorstep.scope', $1, true)")
        .bind(&scope)
        .execute(&mut *tx)
        .await?;
    let names: Vec<String> = sqlx::query_scalar("select name from member_rows order by name")
        .fetch_all(&mut *tx)
        .await?;
    let others: i64 = sqlx::query_scalar(
        "select count(*) from chunks c join documents d on d.id = c.document_id
         where not exists (select 1 from tenants t where t.id = d.branch_id and t.path = $1)",
    )
    .bind(&scope)
    .fetch_one(&mut *tx)
    .await?;
    tx.rollback().await?;
    Ok((names, others))
}
