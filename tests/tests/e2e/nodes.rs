//! Several server nodes on one PostgreSQL database: any node takes changes
//! to any document, a node holding a document hears of the changes another
//! node stored and passes them on to its own devices, and the figures read
//! from any node count every visit once.
//!
//! Needs `DOORSTEP_TEST_POSTGRES` (the test script sets it).

use std::time::Duration;

use doorstep_client::Client;
use doorstep_protocol::Month;
use doorstep_server::store::Location;
use doorstep_server::tenancy::Role;
use doorstep_tests::{TestServer, eventually, sdk_device};

/// A node on `database` that hears other nodes only through their
/// announcements: the slow poll is put out of reach, and documents stay
/// live (a document loaded afresh would read everything anyway).
async fn node(database: &Location, change_poll: Duration) -> anyhow::Result<TestServer> {
    let database = database.clone();
    TestServer::spawn_with(move |c| {
        c.database = database;
        c.change_poll = change_poll;
        c.document_idle = Duration::from_secs(3600);
    })
    .await
}

/// A database of its own, for the role the nodes should connect as: one
/// that owns nothing, held to row-level security.
async fn database() -> anyhow::Result<Location> {
    doorstep_tests::postgres_database_for_app().await
}

/// Two `doorstep serve` processes on one new database, with a district in
/// it, and a store on it for the test's own work.
struct Processes {
    store: doorstep_server::store::Store,
    district: doorstep_tests::District,
    node1: doorstep_tests::ServerProcess,
    node2: doorstep_tests::ServerProcess,
    _data_dir: tempfile::TempDir,
}

async fn two_processes() -> anyhow::Result<Processes> {
    let database = database().await?;
    let Location::Postgres(url) = &database else {
        anyhow::bail!("the nodes run on PostgreSQL");
    };
    let store = doorstep_server::store::Store::open_at(&database).await?;
    let district = doorstep_tests::make_district(&store).await?;
    let binary = std::path::Path::new(env!("CARGO_BIN_EXE_doorstep"));
    // On PostgreSQL the data directory holds no database; kept anyway.
    let unused = tempfile::tempdir()?;
    let env = [("DOORSTEP_DATABASE_URL", url.as_str())];
    let node1 = doorstep_tests::ServerProcess::start_with_env(binary, unused.path(), &env).await?;
    let node2 = doorstep_tests::ServerProcess::start_with_env(binary, unused.path(), &env).await?;
    Ok(Processes {
        store,
        district,
        node1,
        node2,
        _data_dir: unused,
    })
}

async fn visits(phone: &Client) -> anyhow::Result<usize> {
    let month: Month = "2026-11".parse()?;
    Ok(phone.visits(month, false).await?.len())
}

async fn district_total(node: &TestServer, token: &str) -> anyhow::Result<serde_json::Value> {
    let rollup: serde_json::Value = reqwest::Client::new()
        .get(format!("{}/api/v1/rollups?month=2026-11", node.http_url()))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(rollup["total"].clone())
}

#[tokio::test]
async fn two_nodes_converge_and_either_counts_every_visit_once() -> anyhow::Result<()> {
    let database = database().await?;
    let never = Duration::from_secs(3600);
    let node1 = node(&database, never).await?;
    let node2 = node(&database, never).await?;
    let d = node1.district().await?;
    let admin = node1
        .login_as("district", Role::DistrictAdmin, d.district.id)
        .await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = sdk_device(
        &node1.store,
        &node1.http_url(),
        d.yingfeng.id,
        dir_a.path(),
        |_| {},
    )
    .await?;
    let b = sdk_device(
        &node2.store,
        &node2.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        |_| {},
    )
    .await?;
    // Both nodes hold the branch's documents live.
    doorstep_tests::record_visit(&a, "王", 100).await?;
    a.sync_now().await?;
    b.sync_now().await?;
    eventually(Duration::from_secs(20), || async {
        Ok(visits(&b).await? == 1)
    })
    .await?;

    // Offline on both phones, then each syncs with its own node.
    doorstep_tests::record_visit(&a, "李", 200).await?;
    doorstep_tests::record_visit(&b, "张", 400).await?;
    a.sync_now().await?;
    b.sync_now().await?;
    eventually(Duration::from_secs(20), || async {
        a.sync_now().await?;
        b.sync_now().await?;
        Ok(visits(&a).await? == 3 && visits(&b).await? == 3)
    })
    .await?;

    // The figures, from either node: each visit once, the aid summed once.
    let admin2 = node2
        .login_as("district2", Role::DistrictAdmin, d.district.id)
        .await?;
    for (node, token) in [(&node1, &admin), (&node2, &admin2)] {
        eventually(Duration::from_secs(20), || async {
            let total = district_total(node, token).await?;
            Ok(total["visits"] == 3 && total["aid_cash_fen"] == 700)
        })
        .await?;
    }
    Ok(())
}

/// An announcement sent while a node's listening connection is down is
/// lost; the node re-reads what it holds when it reconnects, and the slow
/// poll catches anything else. The phone on that node never sees its
/// document go back.
#[tokio::test]
async fn a_node_whose_listener_was_cut_catches_up_and_never_goes_back() -> anyhow::Result<()> {
    let database = database().await?;
    let node1 = node(&database, Duration::from_secs(3600)).await?;
    let node2 = node(&database, Duration::from_secs(2)).await?;
    let d = node1.district().await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = sdk_device(
        &node1.store,
        &node1.http_url(),
        d.yingfeng.id,
        dir_a.path(),
        |_| {},
    )
    .await?;
    let b = sdk_device(
        &node2.store,
        &node2.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        |_| {},
    )
    .await?;
    doorstep_tests::record_visit(&a, "王", 100).await?;
    a.sync_now().await?;
    b.sync_now().await?;
    eventually(Duration::from_secs(20), || async {
        Ok(visits(&b).await? == 1)
    })
    .await?;

    let Location::Postgres(url) = &database else {
        anyhow::bail!("the nodes run on PostgreSQL");
    };
    let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(url).await?;
    let cut: i64 = sqlx::query_scalar(
        "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
         where datname = current_database() and query ilike 'listen%') t",
    )
    .fetch_one(&mut admin)
    .await?;
    assert_eq!(cut, 2, "each node listens on one connection");
    for n in 0..3 {
        doorstep_tests::record_visit(&a, &format!("李{n}"), 10).await?;
        a.sync_now().await?;
    }
    let seen = std::cell::Cell::new(1);
    eventually(Duration::from_secs(20), || async {
        b.sync_now().await?;
        let now = visits(&b).await?;
        let before = seen.replace(now);
        anyhow::ensure!(
            now >= before,
            "the phone's visits went from {before} to {now}"
        );
        Ok(now == 4)
    })
    .await?;
    Ok(())
}

/// Two `doorstep serve` processes on one database, as behind a load
/// balancer. One is killed with SIGKILL while its phone syncs; the phone
/// then reaches the other (as the balancer would send it), and nothing it
/// was told is stored is missing, on the phones or in the figures.
#[tokio::test]
async fn a_node_killed_during_sync_loses_nothing_its_phone_was_told_is_stored() -> anyhow::Result<()>
{
    let Processes {
        store,
        district: d,
        node1,
        node2,
        _data_dir,
    } = two_processes().await?;

    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = sdk_device(
        &store,
        &node1.http_url(),
        d.yingfeng.id,
        dir_a.path(),
        |_| {},
    )
    .await?;
    let b = sdk_device(
        &store,
        &node2.http_url(),
        d.yingfeng.id,
        dir_b.path(),
        |_| {},
    )
    .await?;
    for n in 0..5 {
        doorstep_tests::record_visit(&a, &format!("王{n}"), 100).await?;
    }
    a.sync_now().await?;
    for n in 0..5 {
        doorstep_tests::record_visit(&a, &format!("李{n}"), 100).await?;
    }
    // Killed while the second batch may be in flight: whatever the phone
    // was not told is stored, it still holds and offers again.
    let syncing = a.sync_now();
    let killing = async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        node1.kill().await
    };
    let (_, killed) = tokio::join!(syncing, killing);
    killed?;
    drop(a);
    let a = Client::open(doorstep_client::ClientConfig::new(
        dir_a.path(),
        node2.http_url(),
        doorstep_tests::test_store_key(),
    ))
    .await?;
    eventually(Duration::from_secs(30), || async {
        a.sync_now().await?;
        b.sync_now().await?;
        Ok(visits(&a).await? == 10 && visits(&b).await? == 10)
    })
    .await?;

    let password = "a long enough password";
    doorstep_server::admin::create_user(
        &store,
        "district",
        password,
        Role::DistrictAdmin,
        d.district.id,
        "test",
    )
    .await?;
    let login: serde_json::Value = reqwest::Client::new()
        .post(format!("{}/api/v1/login", node2.http_url()))
        .json(&serde_json::json!({ "username": "district", "password": password }))
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    let token = login["token"].as_str().unwrap_or_default().to_owned();
    eventually(Duration::from_secs(30), || async {
        let rollup: serde_json::Value = reqwest::Client::new()
            .get(format!("{}/api/v1/rollups?month=2026-11", node2.http_url()))
            .bearer_auth(&token)
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
        Ok(rollup["total"]["visits"] == 10 && rollup["total"]["aid_cash_fen"] == 1000)
    })
    .await?;
    Ok(())
}

/// The README's nginx example, run: two `doorstep serve` processes behind
/// one nginx that carries WebSockets. A phone knows only nginx's address;
/// it syncs through it, one node is killed with SIGKILL, and its next
/// syncs reach the other node through the same address, with nothing it
/// was told is stored lost.
///
/// Needs nginx (the test script installs Debian's `nginx-light`).
#[tokio::test]
async fn behind_nginx_a_phone_syncs_through_one_address_and_survives_a_node() -> anyhow::Result<()>
{
    let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .map(std::path::Path::new)
        .find(|p| p.is_file())
        .ok_or_else(|| anyhow::anyhow!("nginx is not installed (apt-get install nginx-light)"))?;
    let Processes {
        store,
        district: d,
        node1,
        node2,
        _data_dir,
    } = two_processes().await?;

    let balancer = Nginx::start(nginx, &[node1.addr, node2.addr]).await?;
    let dir = tempfile::tempdir()?;
    let phone = sdk_device(&store, &balancer.url(), d.yingfeng.id, dir.path(), |_| {}).await?;
    for n in 0..3 {
        doorstep_tests::record_visit(&phone, &format!("王{n}"), 100).await?;
        phone.sync_now().await?;
    }
    node1.kill().await?;
    for n in 0..3 {
        doorstep_tests::record_visit(&phone, &format!("李{n}"), 100).await?;
    }
    // nginx sends a request the dead node refuses on to the live one; an
    // attempt that meets the dead node's socket closing is tried again.
    eventually(Duration::from_secs(30), || async {
        if let Err(e) = phone.sync_now().await {
            eprintln!("a sync through the balancer failed ({e}); trying again");
            return Ok(false);
        }
        Ok(visits(&phone).await? == 6 && phone.sync_state().await?.pending_changes == 0)
    })
    .await?;
    // Everything is on the live node: a fresh phone of the branch gets it
    // through the balancer.
    let fresh_dir = tempfile::tempdir()?;
    let fresh = sdk_device(
        &store,
        &balancer.url(),
        d.yingfeng.id,
        fresh_dir.path(),
        |_| {},
    )
    .await?;
    eventually(Duration::from_secs(30), || async {
        fresh.sync_now().await?;
        Ok(visits(&fresh).await? == 6)
    })
    .await?;
    drop(node2);
    Ok(())
}

/// nginx in the foreground on a free port of 127.0.0.1, proxying to
/// `nodes` with the README's directives; stopped on drop.
struct Nginx {
    child: tokio::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Nginx {
    async fn start(
        binary: &std::path::Path,
        nodes: &[std::net::SocketAddr],
    ) -> anyhow::Result<Nginx> {
        let dir = tempfile::tempdir()?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let servers: String = nodes.iter().map(|a| format!("server {a}; ")).collect();
        let path = dir.path().display();
        // One process, no workers: killing it stops nginx whole (a killed
        // master leaves its workers running, holding the port).
        let config = format!(
            "master_process off;
             daemon off;
             pid {path}/nginx.pid;
             error_log {path}/error.log;
             events {{}}
             http {{
                 access_log off;
                 client_body_temp_path {path}/body;
                 proxy_temp_path {path}/proxy;
                 upstream doorstep {{ {servers} }}
                 server {{
                     listen 127.0.0.1:{port};
                     location / {{
                         proxy_pass http://doorstep;
                         proxy_http_version 1.1;
                         proxy_set_header Upgrade $http_upgrade;
                         proxy_set_header Connection \"upgrade\";
                         proxy_read_timeout 120s;
                     }}
                     location /metrics {{ deny all; }}
                 }}
             }}"
        );
        let file = dir.path().join("nginx.conf");
        std::fs::write(&file, config)?;
        let child = tokio::process::Command::new(binary)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&file)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let nginx = Nginx {
            child,
            port,
            _dir: dir,
        };
        eventually(Duration::from_secs(10), || async {
            Ok(tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok())
        })
        .await?;
        Ok(nginx)
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}
