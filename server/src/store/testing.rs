//! Throwaway PostgreSQL databases for tests.
//!
//! The same tests run on both backends: on SQLite by default, and on
//! PostgreSQL when `DOORSTEP_TEST_POSTGRES` names a server
//! (`postgres://user@host:port`), where each test gets a database of its
//! own. The test script starts a throwaway cluster and runs the suite so,
//! then runs the store's and the end-to-end tests again with
//! `DOORSTEP_TEST_BACKEND=sqlite`.

use std::str::FromStr;

use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use super::{Location, StoreError};

/// The variable naming the PostgreSQL server tests may make databases on.
pub const TEST_POSTGRES: &str = "DOORSTEP_TEST_POSTGRES";

/// Set to `sqlite`, tests run on SQLite although [`TEST_POSTGRES`] names
/// a server (tests that compare the backends still use it).
pub const TEST_BACKEND: &str = "DOORSTEP_TEST_BACKEND";

/// The PostgreSQL server tests run on, if one was named and not put aside
/// by [`TEST_BACKEND`].
pub fn test_postgres() -> Option<String> {
    if std::env::var(TEST_BACKEND).is_ok_and(|b| b.eq_ignore_ascii_case("sqlite")) {
        return None;
    }
    postgres_server()
}

/// The PostgreSQL server named by [`TEST_POSTGRES`], whatever the backend
/// the tests run on.
pub fn postgres_server() -> Option<String> {
    std::env::var(TEST_POSTGRES)
        .ok()
        .filter(|url| !url.is_empty())
}

/// Makes an empty database on the PostgreSQL server at `server` (a URL
/// whose path, if any, is ignored) and returns where it is.
pub async fn create_database(server: &str) -> Result<Location, StoreError> {
    sqlx::any::install_default_drivers();
    let name = format!("doorstep_test_{}", uuid::Uuid::new_v4().simple());
    let (base, query) = match server.split_once('?') {
        Some((base, query)) => (base, Some(query)),
        None => (server, None),
    };
    // postgres://user@host:port[/database]: the host part ends at the
    // first "/" after the scheme's "//".
    let after_scheme = base.find("://").map_or(0, |i| i + 3);
    let host_end = base[after_scheme..]
        .find('/')
        .map_or(base.len(), |i| after_scheme + i);
    let with_database = |database: &str| {
        let mut url = format!("{}/{database}", &base[..host_end]);
        if let Some(query) = query {
            url.push('?');
            url.push_str(query);
        }
        url
    };
    let mut admin = AnyConnectOptions::from_str(&with_database("postgres"))?
        .connect()
        .await?;
    // A file copy writes no WAL for the new database's files: a suite
    // makes hundreds.
    admin
        .execute(format!("create database {name} strategy = file_copy").as_str())
        .await?;
    let _ = admin.close().await;
    Ok(Location::Postgres(with_database(&name)))
}

/// The role a server connects as in the end-to-end suite, as the README
/// tells operators to run it: it owns nothing, so row-level security
/// holds it.
pub const APP_ROLE: &str = "doorstep_test_app";

/// [`create_database`], migrated by its owner, and the URL of it for
/// [`APP_ROLE`], granted what the README grants a node.
pub async fn create_database_for_app(server: &str) -> Result<Location, StoreError> {
    let location = create_database(server).await?;
    let Location::Postgres(owner_url) = &location else {
        return Ok(location);
    };
    let store = super::Store::open_at(&location).await?;
    store.close().await;
    let mut owner = AnyConnectOptions::from_str(owner_url)?.connect().await?;
    // Roles belong to the cluster, and tests make databases in parallel:
    // a second `create role` of the same name may fail either way.
    owner
        .execute(
            format!(
                "do $$ begin
                     if not exists (select 1 from pg_roles where rolname = '{APP_ROLE}') then
                         create role {APP_ROLE} login password 'app';
                     end if;
                 exception when duplicate_object or unique_violation then null;
                 end $$"
            )
            .as_str(),
        )
        .await?;
    owner
        .execute(
            format!(
                "grant select, insert, update, delete on all tables in schema public to {APP_ROLE};
                 grant usage on all sequences in schema public to {APP_ROLE}"
            )
            .as_str(),
        )
        .await?;
    let _ = owner.close().await;
    let mut url = url::Url::parse(owner_url).map_err(|e| StoreError::Invalid(e.to_string()))?;
    url.set_username(APP_ROLE)
        .and_then(|()| url.set_password(Some("app")))
        .map_err(|()| StoreError::Invalid("a database URL without a user part".into()))?;
    Ok(Location::Postgres(url.into()))
}

/// Drops a database [`create_database`] made, ending its connections
/// (a test's databases would otherwise fill the disk of a CI machine).
/// It connects as the server [`TEST_POSTGRES`] names, if any: the URL
/// may be the app role's, which owns nothing it could drop.
pub async fn drop_database(url: &str) -> Result<(), StoreError> {
    sqlx::any::install_default_drivers();
    let parsed = url::Url::parse(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
    let name = parsed.path().trim_start_matches('/').to_owned();
    if !name.starts_with("doorstep_test_") {
        return Err(StoreError::Invalid(format!(
            "{name} is not a test database"
        )));
    }
    let mut admin_url = match postgres_server() {
        Some(server) => url::Url::parse(&server).map_err(|e| StoreError::Invalid(e.to_string()))?,
        None => parsed,
    };
    admin_url.set_path("/postgres");
    let mut admin = AnyConnectOptions::from_str(admin_url.as_str())?
        .connect()
        .await?;
    admin
        .execute(format!("drop database if exists {name} with (force)").as_str())
        .await?;
    let _ = admin.close().await;
    Ok(())
}

/// Where a test's database is: a fresh PostgreSQL database when
/// [`TEST_POSTGRES`] is set, else `doorstep.db` in `dir`.
pub async fn test_location(dir: &std::path::Path) -> Location {
    match test_postgres() {
        Some(server) => match create_database(&server).await {
            Ok(location) => location,
            Err(e) => panic!("{TEST_POSTGRES} is set but no database could be made on it: {e}"),
        },
        None => Location::Sqlite(dir.join("doorstep.db")),
    }
}
