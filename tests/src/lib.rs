//! Test harness for Doorstep's end-to-end tests.
//!
//! [`TestServer`] runs the real server on `127.0.0.1:0` over a temporary
//! SQLite file; [`ServerProcess`] runs the real `doorstep` binary instead,
//! for tests that kill it. [`TestPeer`] is a small automerge-repo peer over a
//! real WebSocket, built on `doorstep-protocol`'s session.

mod peer;
mod process;
pub mod shaper;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use doorstep_protocol::TenantId;
use doorstep_server::admin;
use doorstep_server::config::Config;
use doorstep_server::store::faults::FaultyStore;
use doorstep_server::store::testing::{
    create_database, create_database_for_app, drop_database, test_postgres,
};
use doorstep_server::store::{Backend, Location, Store, Tenant};
use doorstep_server::tenancy::{Level, Role};
use serde::Deserialize;
use tokio::sync::oneshot;

pub use peer::{SyncOutcome, TestPeer};
pub use process::ServerProcess;

/// A district with two sub-districts, each with a branch.
#[derive(Debug, Clone)]
pub struct District {
    pub district: Tenant,
    pub xiangyang: Tenant,
    pub dongfeng: Tenant,
    /// Under Xiangyang.
    pub yingfeng: Tenant,
    /// Under Dongfeng.
    pub fenghuangting: Tenant,
}

/// What enrolling a device returns.
#[derive(Debug, Clone, Deserialize)]
pub struct Enrolled {
    pub device_id: String,
    pub branch_id: String,
    pub token: String,
    pub documents: Vec<DocumentEntry>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct DocumentEntry {
    pub document_id: String,
    pub url: String,
    pub kind: String,
    pub month: Option<String>,
}

/// A server running in this process.
#[derive(Debug)]
pub struct TestServer {
    pub addr: SocketAddr,
    pub store: Store,
    /// The documents' storage, through switches that fail it on demand
    /// (disarmed unless a test arms them).
    pub faults: Arc<FaultyStore<Store>>,
    data_dir: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server with default settings.
    pub async fn spawn() -> anyhow::Result<TestServer> {
        Self::spawn_with(|_| {}).await
    }

    /// Starts a server after `configure` adjusts its settings.
    pub async fn spawn_with(configure: impl FnOnce(&mut Config)) -> anyhow::Result<TestServer> {
        let data_dir = tempfile::tempdir()?;
        Self::spawn_in(data_dir, configure).await
    }

    /// Starts a server on an existing data directory (a restart).
    pub async fn spawn_in(
        data_dir: tempfile::TempDir,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestServer> {
        Self::spawn_at(data_dir, "127.0.0.1:0".parse()?, configure).await
    }

    /// Starts a server on a data directory and address: a restart on the
    /// same port, which devices already know.
    pub async fn spawn_at(
        data_dir: tempfile::TempDir,
        addr: SocketAddr,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestServer> {
        Self::spawn_at_on_vfs(data_dir, addr, None, configure).await
    }

    /// [`TestServer::spawn_at`] with the database on an SQLite VFS
    /// registered beforehand (the power-cut one).
    pub async fn spawn_at_on_vfs(
        data_dir: tempfile::TempDir,
        addr: SocketAddr,
        vfs: Option<&str>,
        configure: impl FnOnce(&mut Config),
    ) -> anyhow::Result<TestServer> {
        init_tracing();
        let mut config = Config::new(test_database(data_dir.path(), vfs).await?);
        configure(&mut config);
        // Named after `configure`, which may choose a database itself.
        if let Location::Postgres(url) = &config.database {
            std::fs::write(data_dir.path().join(POSTGRES_DATABASE_FILE), url)?;
        }
        let store = match &config.database {
            Location::Sqlite(path) => Store::open_on_vfs(path, vfs).await?,
            postgres => Store::open_at(postgres).await?,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let (tx, rx) = oneshot::channel();
        let server_store = store.clone();
        let faults = FaultyStore::new(store.clone());
        let documents = faults.clone();
        let task = tokio::spawn(async move {
            let shutdown = async {
                let _ = rx.await;
            };
            if let Err(e) =
                doorstep_server::serve_with(config, server_store, documents, listener, shutdown)
                    .await
            {
                eprintln!("test server failed: {e}");
            }
        });
        Ok(TestServer {
            addr,
            store,
            faults,
            data_dir: Some(data_dir),
            shutdown: Some(tx),
            task: Some(task),
        })
    }

    /// Stops the server and waits for it; the data directory stays.
    pub async fn stop(mut self) -> tempfile::TempDir {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), task).await;
        }
        self.store.close().await;
        self.data_dir
            .take()
            .expect("a running server has its data directory")
    }

    pub fn data_dir(&self) -> &Path {
        self.data_dir
            .as_ref()
            .expect("a running server has its data directory")
            .path()
    }

    pub fn http_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/sync", self.addr)
    }

    /// `GET path` as the holder of `token`, expecting success and JSON.
    pub async fn get_json(&self, token: &str, path: &str) -> anyhow::Result<serde_json::Value> {
        Ok(reqwest::Client::new()
            .get(format!("{}{path}", self.http_url()))
            .bearer_auth(token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?)
    }

    /// Where the server's database is.
    pub fn location(&self) -> Location {
        match self.store.backend() {
            Backend::Sqlite { path } => Location::Sqlite(path.clone()),
            Backend::Postgres => {
                match std::fs::read_to_string(self.data_dir().join(POSTGRES_DATABASE_FILE)) {
                    Ok(url) => Location::Postgres(url),
                    Err(e) => panic!("a test server on PostgreSQL names its database: {e}"),
                }
            }
        }
    }

    /// The `doorstep` command line's arguments naming this server's
    /// database: the admin CLI run beside it.
    pub fn database_args(&self) -> Vec<std::ffi::OsString> {
        match self.location() {
            Location::Sqlite(_) => vec!["--data-dir".into(), self.data_dir().into()],
            Location::Postgres(url) => vec!["--database".into(), url.into()],
        }
    }

    /// The SQLite file of a server on SQLite; a test that reaches into the
    /// file itself runs on SQLite only (a server on PostgreSQL panics here).
    pub fn database_path(&self) -> PathBuf {
        assert!(
            matches!(self.store.backend(), Backend::Sqlite { .. }),
            "this test reads the SQLite file directly; it runs on SQLite only"
        );
        self.data_dir().join("doorstep.db")
    }

    /// A document as the server stored it (what survives a restart).
    pub async fn stored_document(
        &self,
        id: doorstep_protocol::DocumentId,
    ) -> anyhow::Result<automerge::Automerge> {
        stored_document(&self.store, id).await
    }

    /// Waits (up to 20 s) until the rollup `token` may read for `month`
    /// totals `visits` visits and `aid_cash_fen` of cash aid.
    pub async fn wait_for_rollup_total(
        &self,
        token: &str,
        month: doorstep_protocol::Month,
        visits: usize,
        aid_cash_fen: i64,
    ) -> anyhow::Result<()> {
        let url = format!("{}/api/v1/rollups?month={month}", self.http_url());
        eventually(Duration::from_secs(20), || async {
            let rollup: serde_json::Value = reqwest::Client::new()
                .get(&url)
                .bearer_auth(token)
                .send()
                .await?
                .error_for_status()?
                .json()
                .await?;
            let total = &rollup["total"];
            Ok(total["visits"] == visits && total["aid_cash_fen"] == aid_cash_fen)
        })
        .await
    }

    /// Runs `statements` on the server's database file from outside the
    /// server, each with `bind` as its one parameter: what a damaged disk
    /// or an operator's hand does under it.
    pub async fn alter_database(&self, statements: &[&str], bind: &str) -> anyhow::Result<()> {
        let pool = sqlx::SqlitePool::connect_with(
            sqlx::sqlite::SqliteConnectOptions::new().filename(self.database_path()),
        )
        .await?;
        for statement in statements {
            sqlx::query(statement).bind(bind).execute(&pool).await?;
        }
        pool.close().await;
        Ok(())
    }

    /// The demo-shaped tenant tree.
    pub async fn district(&self) -> anyhow::Result<District> {
        make_district(&self.store).await
    }

    /// Enrolls a device to `branch` through the real HTTP endpoint.
    pub async fn enroll(&self, branch: TenantId, label: &str) -> anyhow::Result<Enrolled> {
        enroll(&self.store, &self.http_url(), branch, label).await
    }

    /// Creates a user and logs in, returning an API token.
    pub async fn login_as(
        &self,
        username: &str,
        role: Role,
        tenant: TenantId,
    ) -> anyhow::Result<String> {
        let password = "a long enough password";
        admin::create_user(&self.store, username, password, role, tenant, "test").await?;
        let response: serde_json::Value = reqwest::Client::new()
            .post(format!("{}/api/v1/login", self.http_url()))
            .json(&serde_json::json!({ "username": username, "password": password }))
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(response["token"]
            .as_str()
            .context("login token")?
            .to_owned())
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        // A server dropped with its data directory (not stopped for a
        // restart) takes its PostgreSQL database with it, on a thread of
        // its own: drop cannot wait, and the test's runtime may be ending.
        if let Some(dir) = &self.data_dir
            && let Ok(url) = std::fs::read_to_string(dir.path().join(POSTGRES_DATABASE_FILE))
        {
            std::thread::spawn(move || {
                if let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    let _ = runtime.block_on(drop_database(&url));
                }
            });
        }
    }
}

/// Server logs in test output (shown for failing tests); `RUST_LOG` filters.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,sqlx=warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}

pub async fn make_district(store: &Store) -> anyhow::Result<District> {
    let district = store
        .create_tenant(None, Level::District, "燕山工委")
        .await?;
    let xiangyang = store
        .create_tenant(Some(district.id), Level::SubDistrict, "向阳街道")
        .await?;
    let dongfeng = store
        .create_tenant(Some(district.id), Level::SubDistrict, "东风街道")
        .await?;
    let yingfeng = store
        .create_tenant(Some(xiangyang.id), Level::Branch, "迎风怡丽社区")
        .await?;
    let fenghuangting = store
        .create_tenant(Some(dongfeng.id), Level::Branch, "凤凰亭社区")
        .await?;
    Ok(District {
        district,
        xiangyang,
        dongfeng,
        yingfeng,
        fenghuangting,
    })
}

/// The store key test devices use, standing in for the platform keystore.
/// Today by this machine's clock: the date tests give the records they make.
/// A test's size or seed from the environment variable `name`, or
/// `default` when it is unset or does not parse.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

pub fn today() -> doorstep_protocol::Date {
    let now = time::OffsetDateTime::now_utc();
    doorstep_protocol::Date::from_ymd(now.year(), now.month() as u8, now.day())
        .expect("today is a date")
}

/// This month by this machine's clock.
pub fn this_month() -> doorstep_protocol::Month {
    today().month()
}

pub fn test_store_key() -> doorstep_client::StoreKey {
    doorstep_client::StoreKey::from_bytes(&[0x5a; doorstep_client::StoreKey::LEN])
        .expect("a key of the right length")
}

/// An SDK client enrolled to `branch`, with its data in `dir`.
pub async fn sdk_device(
    store: &Store,
    http_url: &str,
    branch: TenantId,
    dir: &Path,
    configure: impl FnOnce(&mut doorstep_client::ClientConfig),
) -> anyhow::Result<doorstep_client::Client> {
    let mut config = doorstep_client::ClientConfig::new(dir, http_url, test_store_key());
    configure(&mut config);
    let client = doorstep_client::Client::open(config).await?;
    let issued = admin::issue_enrollment_code(store, branch, "sdk device", 1, "test").await?;
    client.enroll(&issued.code).await?;
    Ok(client)
}

/// Loads a document from a store's chunks.
pub async fn stored_document(
    store: &Store,
    id: doorstep_protocol::DocumentId,
) -> anyhow::Result<automerge::Automerge> {
    let mut doc = automerge::Automerge::new();
    for chunk in store.load_chunks(id).await?.chunks {
        doc.load_incremental(&chunk)?;
    }
    Ok(doc)
}

/// Issues a code with the operator API and exchanges it over HTTP.
pub async fn enroll(
    store: &Store,
    http_url: &str,
    branch: TenantId,
    label: &str,
) -> anyhow::Result<Enrolled> {
    let issued = admin::issue_enrollment_code(store, branch, label, 1, "test").await?;
    let response = reqwest::Client::new()
        .post(format!("{http_url}/api/v1/enroll"))
        .json(&serde_json::json!({ "code": issued.code }))
        .send()
        .await?;
    if !response.status().is_success() {
        bail!("enroll failed: {}", response.status());
    }
    Ok(response.json().await?)
}

/// Registers an actor id for a device over HTTP.
pub async fn register_actor(
    http_url: &str,
    token: &str,
    actor: &automerge::ActorId,
) -> anyhow::Result<reqwest::StatusCode> {
    Ok(reqwest::Client::new()
        .post(format!("{http_url}/api/v1/device/actors"))
        .bearer_auth(token)
        .json(&serde_json::json!({ "actor_id": actor.to_hex_string() }))
        .send()
        .await?
        .status())
}

/// Waits until `check` passes or `timeout` runs out.
pub async fn eventually<F, Fut>(timeout: Duration, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A TLS server whose certificate (for `localhost` and 127.0.0.1) comes
/// from a test CA made by rcgen; returns the CA and the directory holding
/// the server's PEM files (keep it alive with the server).
pub async fn tls_server() -> anyhow::Result<(TestServer, rcgen::Certificate, tempfile::TempDir)> {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, SanType};
    use std::net::{IpAddr, Ipv4Addr};

    let ca_key = KeyPair::generate()?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = ca_params.self_signed(&ca_key)?;
    let server_key = KeyPair::generate()?;
    let mut params = CertificateParams::new(vec!["localhost".to_string()])?;
    params
        .subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    let cert = params.signed_by(&server_key, &ca, &ca_key)?;

    let pem_dir = tempfile::tempdir()?;
    let cert_path = pem_dir.path().join("cert.pem");
    let key_path = pem_dir.path().join("key.pem");
    std::fs::write(&cert_path, cert.pem())?;
    std::fs::write(&key_path, server_key.serialize_pem())?;

    let server = TestServer::spawn_with(|c| {
        c.tls_cert = Some(cert_path.clone());
        c.tls_key = Some(key_path.clone());
    })
    .await?;
    Ok((server, ca, pem_dir))
}

/// The workspace root, for files the tests use (the JS harness).
pub fn workspace_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
}

/// The file in a test server's data directory naming its PostgreSQL
/// database, so that a restart on the directory finds the same one.
const POSTGRES_DATABASE_FILE: &str = "postgres-database";

/// The database of a test server on `data_dir`: the PostgreSQL database
/// named there by an earlier start; else, when `DOORSTEP_TEST_POSTGRES` is
/// set (and the server is not on a test VFS, which only SQLite has), a new
/// database on it; else `doorstep.db` in `data_dir`.
async fn test_database(data_dir: &Path, vfs: Option<&str>) -> anyhow::Result<Location> {
    let named = data_dir.join(POSTGRES_DATABASE_FILE);
    if let Ok(url) = std::fs::read_to_string(&named) {
        return Ok(Location::Postgres(url));
    }
    let sqlite = Location::Sqlite(data_dir.join("doorstep.db"));
    if vfs.is_some() || sqlite_only() || std::fs::exists(data_dir.join("doorstep.db"))? {
        return Ok(sqlite);
    }
    // As a node should run: as a role that owns nothing, held to
    // row-level security.
    match test_postgres() {
        Some(server) => Ok(create_database_for_app(&server).await?),
        None => Ok(sqlite),
    }
}

tokio::task_local! {
    static SQLITE_ONLY: ();
}

/// Whether the running test asked for SQLite ([`on_sqlite`]).
fn sqlite_only() -> bool {
    SQLITE_ONLY.try_with(|_| ()).is_ok()
}

/// Runs `test` with every server it starts on SQLite: for tests of what
/// only SQLite has (its file, its VFS, backups) or that reach into the file.
pub async fn on_sqlite<T>(test: impl Future<Output = T>) -> T {
    SQLITE_ONLY.scope((), test).await
}

/// A database of its own on the PostgreSQL server `DOORSTEP_TEST_POSTGRES`
/// names, for a test that needs PostgreSQL whatever backend the suite runs
/// on (it compares the two, runs several nodes, or tests what only
/// PostgreSQL has): its URL. Without the variable the test fails, saying
/// how to run it.
pub async fn postgres_database() -> anyhow::Result<String> {
    let Some(server) = doorstep_server::store::testing::postgres_server() else {
        bail!(
            "{} is not set: run the suite with the test script, which starts PostgreSQL",
            doorstep_server::store::testing::TEST_POSTGRES
        );
    };
    match create_database(&server).await? {
        Location::Postgres(url) => Ok(url),
        Location::Sqlite(path) => bail!(
            "a PostgreSQL database was asked for, not {}",
            path.display()
        ),
    }
}

/// [`postgres_database`], migrated by its owner, for a role that owns
/// nothing (`store::testing::create_database_for_app`), as a node should
/// connect.
pub async fn postgres_database_for_app() -> anyhow::Result<Location> {
    let Some(server) = doorstep_server::store::testing::postgres_server() else {
        bail!(
            "{} is not set: run the suite with the test script, which starts PostgreSQL",
            doorstep_server::store::testing::TEST_POSTGRES
        );
    };
    Ok(create_database_for_app(&server).await?)
}

/// Adds a member named `name` on `phone` and records a routine visit to
/// them on 2026-11-10 with `cash` fen of cash aid.
pub async fn record_visit(
    phone: &doorstep_client::Client,
    name: &str,
    cash: i64,
) -> anyhow::Result<()> {
    let member = phone
        .add_member(doorstep_client::NewMember {
            name: name.into(),
            ..doorstep_client::NewMember::default()
        })
        .await?;
    phone
        .record_visit(doorstep_client::NewVisit {
            date: "2026-11-10".parse()?,
            member_id: member,
            kind: doorstep_client::VisitKind::Routine,
            visitors: vec!["志愿者".into()],
            aid_cash: doorstep_client::Fen(cash),
            aid_goods: doorstep_client::Fen(0),
            goods_description: None,
            notes: None,
            follow_up: None,
        })
        .await?;
    Ok(())
}
