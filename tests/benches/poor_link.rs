//! The SDK on a poor link: a shaping proxy on loopback (250 kbit/s each
//! way, 300 ms round trip; see `doorstep_tests::shaper`) between the real
//! SDK and the real server, with and without TLS.
//!
//! Four scenarios, each through `checkpoint()` (the app asks, and asks
//! again after a failure) and through the live connection
//! (`start_background_sync`), medians of BENCH_RUNS (3):
//! - reconnect with 200 offline visits (BENCH_VISITS);
//! - the same upload, the link cut once half of it has crossed and back
//!   after 2 s: time from the link's return, and the bytes sent up after it
//!   (the live connection is told by `network_available()`, as an app
//!   does from the platform's connectivity callback);
//! - a fresh device's first sync of a 2,000-member roster (BENCH_ROSTER);
//! - 200 visits on a month that already holds 600 (BENCH_LOG).
//!
//! The limit of each is what the link cannot beat: the bytes that must
//! cross (the changes, deflated; for the cut, half of them) at link rate,
//! plus 3 round trips (TCP, then the WebSocket upgrade, then one exchange;
//! TLS adds its own, which the limit does not grant).
//!
//! `cargo bench -p doorstep-tests --bench poor_link`.

use doorstep_tests::today;
use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use doorstep_client::{
    Client, ClientConfig, Fen, MemberFilter, NewMember, NewVisit, RecordId, SyncStatus, VisitKind,
};
use doorstep_protocol::{DocumentId, Month, TenantId};
use doorstep_server::tenancy::Level;
use doorstep_tests::shaper::{LinkShape, ShapingProxy};
use doorstep_tests::{TestServer, sdk_device, tls_server};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median<T: PartialOrd + Copy>(mut samples: Vec<T>) -> T {
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    samples[samples.len() / 2]
}

fn visit(member: RecordId, n: usize) -> NewVisit {
    NewVisit {
        date: today(),
        member_id: member,
        kind: VisitKind::Routine,
        visitors: vec!["志愿者".into()],
        aid_cash: Fen::from_yuan(10),
        aid_goods: Fen::ZERO,
        goods_description: Some("米和油".into()),
        notes: Some(format!("第{n}次走访，家中老人身体尚可")),
        follow_up: None,
    }
}

/// How a scenario reaches the server.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// The app calls `checkpoint()` until it says safe, 100 ms apart after
    /// a failure (an app polling; nothing tells it the link is back).
    Checkpoint,
    /// The live connection (`start_background_sync`).
    Live,
}

/// One measured run.
#[derive(Debug, Clone, Copy)]
struct Run {
    seconds: f64,
    limit: f64,
    up: u64,
    down: u64,
}

/// A server, a proxy in front of it, and the branches the scenarios use.
struct Bench {
    server: TestServer,
    proxy: ShapingProxy,
    tls: bool,
    ca_pem: Option<Vec<u8>>,
    /// One member, an empty month: the reconnect and the cut.
    small: (TenantId, RecordId),
    /// The big roster.
    roster: TenantId,
    /// One member, a month of BENCH_LOG visits.
    log: (TenantId, RecordId),
    _pems: Option<tempfile::TempDir>,
}

impl Bench {
    async fn new(tls: bool) -> anyhow::Result<Bench> {
        let (server, ca_pem, pems) = if tls {
            let (server, ca, pems) = tls_server().await?;
            (server, Some(ca.pem().into_bytes()), Some(pems))
        } else {
            (TestServer::spawn().await?, None, None)
        };
        let proxy = ShapingProxy::start(server.addr, LinkShape::poor()).await?;
        let d = server.district().await?;
        let branch = |name: &'static str| {
            let store = server.store.clone();
            let parent = d.xiangyang.id;
            async move {
                anyhow::Ok(
                    store
                        .create_tenant(Some(parent), Level::Branch, name)
                        .await?
                        .id,
                )
            }
        };
        let (small, roster, log) = (
            branch("小社区").await?,
            branch("大社区").await?,
            branch("老社区").await?,
        );
        // Seeded straight to the server, not through the proxy.
        let seeds = tempfile::tempdir()?;
        let direct = direct_url(&server, tls);
        let seed = |branch: TenantId, name: &'static str| {
            let (store, url, ca) = (server.store.clone(), direct.clone(), ca_pem.clone());
            let dir = seeds.path().join(name);
            async move { device_at(&store, &url, ca, branch, &dir).await }
        };
        let seeder = seed(small, "small").await?;
        let small_member = seeder.add_member(member("张秀英")).await?;
        seeder.sync_now().await?;
        let seeder = seed(roster, "roster").await?;
        for i in 0..env_or("BENCH_ROSTER", 2_000) {
            seeder.add_member(member(&format!("居民{i:04}"))).await?;
        }
        seeder.sync_now().await?;
        let seeder = seed(log, "log").await?;
        let log_member = seeder.add_member(member("李桂兰")).await?;
        for n in 0..env_or("BENCH_LOG", 600) {
            seeder.record_visit(visit(log_member, n)).await?;
        }
        seeder.sync_now().await?;
        let bench = Bench {
            server,
            proxy,
            tls,
            ca_pem,
            small: (small, small_member),
            roster,
            log: (log, log_member),
            _pems: pems,
        };
        Ok(bench)
    }

    /// A device behind the proxy, enrolled and synced with shaping off.
    async fn device(&self, branch: TenantId, dir: &Path) -> anyhow::Result<Client> {
        self.proxy.set_shaped(false);
        let device = self.enrolled(branch, dir).await?;
        device.sync_now().await?;
        Ok(device)
    }

    /// A device enrolled through the proxy.
    async fn enrolled(&self, branch: TenantId, dir: &Path) -> anyhow::Result<Client> {
        let url = self.proxy.http_url(self.tls);
        device_at(&self.server.store, &url, self.ca_pem.clone(), branch, dir).await
    }

    fn limit(&self, bytes: usize) -> f64 {
        let shape = self.proxy.shape();
        (shape.transfer(bytes) + shape.round_trip() * 3).as_secs_f64()
    }

    /// A device with BENCH_VISITS offline visits; the bytes they need.
    async fn offline_visits(
        &self,
        (branch, member): (TenantId, RecordId),
        dir: &Path,
    ) -> anyhow::Result<(Client, usize)> {
        let device = self.device(branch, dir).await?;
        for n in 0..env_or("BENCH_VISITS", 200) {
            device.record_visit(visit(member, n)).await?;
        }
        let needed = deflated_changes(&device.export_unsynced().await?)?;
        Ok((device, needed))
    }

    async fn upload(&self, mode: Mode, branch: (TenantId, RecordId)) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let (device, needed) = self.offline_visits(branch, dir.path()).await?;
        self.proxy.set_shaped(true);
        let (up, down) = (self.proxy.counters().up(), self.proxy.counters().down());
        let started = Instant::now();
        let service = until_acknowledged(&device, mode).await?;
        let seconds = started.elapsed().as_secs_f64();
        if let Some(service) = service {
            service.stop().await;
        }
        Ok(Run {
            seconds,
            limit: self.limit(needed),
            up: self.proxy.counters().up() - up,
            down: self.proxy.counters().down() - down,
        })
    }

    /// The upload, cut once `half` bytes have crossed, back after 2 s.
    async fn cut(&self, mode: Mode, half: u64) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        let (device, needed) = self.offline_visits(self.small, dir.path()).await?;
        self.proxy.set_shaped(true);
        let counters = self.proxy.counters();
        let up = counters.up();
        let uploading = until_acknowledged(&device, mode);
        let watch_and_cut = async {
            while counters.up() - up < half {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            self.proxy.cut();
            tokio::time::sleep(Duration::from_secs(2)).await;
            self.proxy.restore();
            if mode == Mode::Live {
                // As the app does from the platform's connectivity callback.
                device.network_available();
            }
            (Instant::now(), counters.up(), counters.down())
        };
        let (service, (back, up_back, down_back)) = tokio::join!(uploading, watch_and_cut);
        let seconds = back.elapsed().as_secs_f64();
        if let Some(service) = service? {
            service.stop().await;
        }
        Ok(Run {
            seconds,
            limit: self.limit(needed / 2),
            up: counters.up() - up_back,
            down: counters.down() - down_back,
        })
    }

    async fn fresh(&self, mode: Mode) -> anyhow::Result<Run> {
        let dir = tempfile::tempdir()?;
        self.proxy.set_shaped(false);
        let device = self.enrolled(self.roster, dir.path()).await?;
        let mut needed = self
            .server
            .stored_document(DocumentId::roster(self.roster))
            .await?
            .save()
            .len();
        let now = time::OffsetDateTime::now_utc();
        let month = Month::new(now.year(), now.month() as u8).expect("a month");
        for month in [month, month.previous()] {
            needed += self
                .server
                .stored_document(DocumentId::monthly_log(self.roster, month))
                .await?
                .save()
                .len();
        }
        self.proxy.set_shaped(true);
        let (up, down) = (self.proxy.counters().up(), self.proxy.counters().down());
        let started = Instant::now();
        let service = until_acknowledged(&device, mode).await?;
        let seconds = started.elapsed().as_secs_f64();
        if let Some(service) = service {
            service.stop().await;
        }
        let members = device.members(&MemberFilter::default()).await?.len();
        anyhow::ensure!(
            members == env_or("BENCH_ROSTER", 2_000),
            "the fresh device has {members} members"
        );
        Ok(Run {
            seconds,
            limit: self.limit(needed),
            up: self.proxy.counters().up() - up,
            down: self.proxy.counters().down() - down,
        })
    }
}

fn direct_url(server: &TestServer, tls: bool) -> String {
    let scheme = if tls { "https" } else { "http" };
    format!("{scheme}://127.0.0.1:{}", server.addr.port())
}

async fn device_at(
    store: &doorstep_server::store::Store,
    url: &str,
    ca_pem: Option<Vec<u8>>,
    branch: TenantId,
    dir: &Path,
) -> anyhow::Result<Client> {
    sdk_device(store, url, branch, dir, |c: &mut ClientConfig| {
        c.extra_ca_pem = ca_pem;
    })
    .await
}

fn member(name: &str) -> NewMember {
    NewMember {
        name: name.into(),
        ..NewMember::default()
    }
}

/// The bytes of an export's changes, deflated: what the link must carry
/// at the least.
fn deflated_changes(export: &[u8]) -> anyhow::Result<usize> {
    let export: serde_json::Value = serde_json::from_slice(export)?;
    let mut raw = Vec::new();
    for document in export["documents"].as_array().into_iter().flatten() {
        for change in document["changes"].as_array().into_iter().flatten() {
            raw.extend(hex_decode(change.as_str().unwrap_or_default())?);
        }
    }
    let mut deflate = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::best());
    deflate.write_all(&raw)?;
    Ok(deflate.finish()?.len())
}

fn hex_decode(hex: &str) -> anyhow::Result<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|i| Ok(u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16)?))
        .collect()
}

/// Syncs until the server holds every edit of the device and the device
/// everything of the server; the live service is returned to be stopped.
async fn until_acknowledged(
    device: &Client,
    mode: Mode,
) -> anyhow::Result<Option<doorstep_client::BackgroundSync>> {
    match mode {
        Mode::Checkpoint => loop {
            let checkpoint = device.checkpoint().await?;
            if checkpoint.safe && checkpoint.problem.is_none() {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        },
        Mode::Live => {
            let mut status = device.subscribe_status();
            let service = device.start_background_sync();
            loop {
                if matches!(*status.borrow_and_update(), SyncStatus::UpToDate { .. })
                    && device.pending_changes().await? == 0
                {
                    return Ok(Some(service));
                }
                let _ = tokio::time::timeout(Duration::from_millis(50), status.changed()).await;
            }
        }
    }
}

fn row(name: &str, runs: &[(Mode, Vec<Run>)]) {
    let mut cells = Vec::new();
    let mut limit = 0.0;
    for (mode, runs) in runs {
        let seconds = median(runs.iter().map(|r| r.seconds).collect());
        limit = median(runs.iter().map(|r| r.limit).collect());
        let up = median(runs.iter().map(|r| r.up).collect());
        let down = median(runs.iter().map(|r| r.down).collect());
        cells.push(format!(
            "{mode:?} {seconds:.2} s ({:.2}x, {:.1} kB up, {:.1} kB down)",
            seconds / limit,
            up as f64 / 1e3,
            down as f64 / 1e3
        ));
    }
    println!("| {name} | {} | {limit:.2} s |", cells.join(" | "));
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let runs = env_or("BENCH_RUNS", 3);
    let modes = [Mode::Checkpoint, Mode::Live];
    for tls in [false, true] {
        let bench = Bench::new(tls).await?;
        println!(
            "\n{} (250 kbit/s each way, 300 ms round trip; medians of {runs})",
            if tls { "TLS" } else { "no TLS" }
        );
        println!("| scenario | checkpoint() | live connection | limit |\n|---|---|---|---|");
        let mut reconnect = Vec::new();
        for mode in modes {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(bench.upload(mode, bench.small).await?);
            }
            reconnect.push((mode, samples));
        }
        row("reconnect with offline visits", &reconnect);
        let mut cut = Vec::new();
        for (mode, uploads) in &reconnect {
            let half = median(uploads.iter().map(|r| r.up).collect()) / 2;
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(bench.cut(*mode, half).await?);
            }
            cut.push((*mode, samples));
        }
        row("link cut at half the upload (from its return)", &cut);
        let mut fresh = Vec::new();
        for mode in modes {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(bench.fresh(mode).await?);
            }
            fresh.push((mode, samples));
        }
        row("fresh device, big roster", &fresh);
        let mut log = Vec::new();
        for mode in modes {
            let mut samples = Vec::new();
            for _ in 0..runs {
                samples.push(bench.upload(mode, bench.log).await?);
            }
            log.push((mode, samples));
        }
        row("visits on a long log", &log);
    }
    Ok(())
}
