//! Throwaway PostgreSQL databases for tests.
//!
//! The same tests run on both backends: on SQLite by default, and on
//! PostgreSQL when `DOORSTEP_TEST_POSTGRES` names a server
//! (`postgres://user@host:port`), where each test gets a database of its
//! own. The test script starts a throwaway cluster and runs them so.

use std::str::FromStr;

use sqlx::any::AnyConnectOptions;
use sqlx::{ConnectOptions, Connection, Executor};

use super::{Location, StoreError};

/// The variable naming the PostgreSQL server tests may make databases on.
pub const TEST_POSTGRES: &str = "DOORSTEP_TEST_POSTGRES";

/// The PostgreSQL server tests run on, if one was named.
pub fn test_postgres() -> Option<String> {
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
    admin
        .execute(format!("create database {name}").as_str())
        .await?;
    let _ = admin.close().await;
    Ok(Location::Postgres(with_database(&name)))
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
