//! `doorstep demo`: a demo district modeled on the Yanshan report.
//!
//! Creates the district, its sub-districts and branches, enrolls two
//! simulated volunteer phones per branch that work offline with the real
//! client SDK and then sync through the real server, and ends by printing
//! the district's rollup for the year, checked against what it generated,
//! and the dashboard's address. At `--scale 1` the year reproduces the
//! report's figures exactly.

mod plan;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use doorstep_client::{
    Client, ClientConfig, Fen, FundDirection, HardshipKind, MemberKind, NewFundEntry,
    NewHardshipEntry, NewMember, NewPlacement, NewTeam, NewTraining, NewVisit, RecordId, StoreKey,
    TeamPerson, TrainingLevel, VisitKind,
};
use doorstep_protocol::{Date, TenantId};
use doorstep_server::admin;
use doorstep_server::data_dir::{DataDirLock, Hold};
use doorstep_server::rollup::{self, Figures, Holiday, Period};
use doorstep_server::store::{Store, StoreError, Tenant};
use doorstep_server::tenancy::{Level, Role};
use plan::{Plan, split};

/// Fill a demo district through simulated volunteer phones.
#[derive(Debug, Parser)]
#[command(name = "doorstep demo")]
struct Args {
    /// The server's data directory (the demo writes tenants and codes there).
    #[arg(long, env = "DOORSTEP_DATA_DIR", default_value = "./doorstep-data")]
    data_dir: PathBuf,
    /// Where to serve, when no running server is given.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// A server already running on `--data-dir`, e.g. http://127.0.0.1:8080.
    #[arg(long)]
    server: Option<String>,
    /// Divide the report's figures by this, for a quick demo.
    #[arg(long, default_value_t = 1)]
    scale: i64,
    /// Stop when done instead of serving the dashboard until Ctrl-C.
    #[arg(long)]
    exit: bool,
    /// Print the plan and the district's figures as JSON at the end.
    #[arg(long)]
    json: bool,
    /// The demo's today (YYYY-MM-DD, not after the real one): its year is
    /// the one filled, and nothing is dated after it. For a demo that looks
    /// the same whenever it runs.
    #[arg(long)]
    today: Option<Date>,
}

const CATEGORIES: &[&str] = &[
    "舞蹈",
    "合唱",
    "太极拳",
    "书法",
    "摄影",
    "乒乓球",
    "门球",
    "秧歌",
    "京剧",
    "评剧",
    "腰鼓",
    "模特",
    "手工编织",
    "剪纸",
    "绘画",
    "诗词",
    "读书",
    "健步走",
    "广场舞",
    "葫芦丝",
    "二胡",
    "口琴",
    "象棋",
    "围棋",
    "桥牌",
    "钓鱼",
    "游泳",
    "羽毛球",
    "健身操",
    "扇子舞",
    "空竹",
    "毽球",
    "柔力球",
    "台球",
    "篮球",
    "足球",
    "登山",
    "骑行",
    "园艺",
    "烹饪",
    "茶艺",
    "插花",
    "朗诵",
    "快板",
    "相声",
    "电子琴",
    "萨克斯",
    "民乐",
    "合唱指挥",
    "戏曲",
    "老年模特",
    "志愿巡逻",
    "环境保护",
    "助老服务",
    "法律宣传",
    "科普宣传",
];

struct BranchSpec {
    sub_district: &'static str,
    name: &'static str,
}

const BRANCHES: &[BranchSpec] = &[
    BranchSpec {
        sub_district: "向阳街道工委",
        name: "迎风怡丽社区支部",
    },
    BranchSpec {
        sub_district: "向阳街道工委",
        name: "向阳里社区支部",
    },
    BranchSpec {
        sub_district: "东风街道工委",
        name: "凤凰亭社区支部",
    },
    BranchSpec {
        sub_district: "东风街道工委",
        name: "东风北里社区支部",
    },
    BranchSpec {
        sub_district: "区直机关工委",
        name: "市政管委支部",
    },
];

/// Everything one branch must generate.
#[derive(Debug, Default, Clone)]
struct BranchWork {
    households: i64,
    aid_fen: i64,
    donations_fen: i64,
    /// Attendance of each training session the branch ran.
    trainings: Vec<i64>,
    placements: i64,
    /// (category, members, backbones, people) per team.
    teams: Vec<(String, i64, i64, i64)>,
}

fn allocate(plan: &Plan) -> Vec<BranchWork> {
    let n = BRANCHES.len();
    let mut work = vec![BranchWork::default(); n];
    for (field, total) in [
        (0, plan.households),
        (1, plan.aid_fen),
        (2, plan.donations_fen),
        (3, plan.placements),
    ] {
        for (w, share) in work.iter_mut().zip(split(total, n)) {
            match field {
                0 => w.households = share,
                1 => w.aid_fen = share,
                2 => w.donations_fen = share,
                _ => w.placements = share,
            }
        }
    }
    // Sessions go round the branches; attendances are split over sessions.
    for (t, attendance) in split(plan.attendance, plan.trainings as usize)
        .into_iter()
        .enumerate()
    {
        work[t % n].trainings.push(attendance);
    }
    // Teams across the district: categories cycle, so every one is used.
    let teams = plan.teams as usize;
    let members = split(plan.team_members, teams);
    let people = split(plan.team_people, teams);
    let mut backbones: Vec<i64> = members.iter().map(|m| m * 7 / 10).collect();
    let mut missing = plan.backbones - backbones.iter().sum::<i64>();
    for (b, m) in backbones.iter_mut().zip(&members) {
        if missing > 0 && *b < *m {
            *b += 1;
            missing -= 1;
        }
    }
    for t in 0..teams {
        let category = CATEGORIES
            .get(t % plan.categories as usize)
            .map(|c| (*c).to_owned())
            .unwrap_or_else(|| format!("类别{}", t % plan.categories as usize));
        work[t % n]
            .teams
            .push((category, members[t], backbones[t], people[t]));
    }
    work
}

/// The `i`th demo date of the year so far: spread over the months up to
/// this one, and in this month over the days up to today, so that nothing
/// is dated after today. Today is UTC's, which is never ahead of the
/// organisation's (China's, UTC+8).
fn date(today: time::Date, i: i64) -> anyhow::Result<Date> {
    let months = i64::from(today.month() as u8);
    let month = (i % months) as u8 + 1;
    let days = if month == today.month() as u8 {
        i64::from(today.day()).min(28)
    } else {
        28
    };
    let day = (i % days) as u8 + 1;
    Date::from_ymd(today.year(), month, day).context("a demo date")
}

/// The date of the `i`th holiday visit. Branches visit before Spring
/// Festival above all and before the other holidays the report's "重大节日"
/// covers: six in ten visits fall in the Spring Festival campaign, two
/// before 1 July, one each before Mid-Autumn and National Day. Each is
/// dated within the part of its campaign that lies in this year and not
/// after today; a visit whose campaign has not begun yet is spread over
/// the year so far instead.
fn holiday_visit_date(today: time::Date, i: i64) -> anyhow::Result<Date> {
    let holiday = match i % 10 {
        0..=5 => Holiday::SpringFestival,
        6 | 7 => Holiday::PartyFounding,
        8 => Holiday::MidAutumn,
        _ => Holiday::NationalDay,
    };
    let year_start = time::Date::from_calendar_date(today.year(), time::Month::January, 1)?;
    let Some(campaign) = holiday.campaign(today.year()) else {
        return date(today, i);
    };
    let from = campaign.from.as_time().max(year_start);
    let to = campaign.to.as_time().min(today);
    if to < from {
        return date(today, i);
    }
    let days = (to - from).whole_days() + 1;
    Ok(Date::from_time(
        from + time::Duration::days((i / 10) % days),
    ))
}

/// A simulated phone's keystore: its store key in a file beside (not in)
/// its data directory, so the demo's phones reopen across runs. A real app
/// keeps the key in the Android Keystore or the iOS Keychain.
fn simulated_keystore(dir: &std::path::Path) -> anyhow::Result<StoreKey> {
    let path = dir.with_extension("key");
    if let Ok(hex) = std::fs::read_to_string(&path) {
        let bytes = hex::decode(hex.trim()).context("a simulated keystore entry")?;
        return Ok(StoreKey::from_bytes(&bytes)?);
    }
    let key = StoreKey::generate();
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&path, hex::encode(key.as_bytes()))?;
    Ok(key)
}

async fn phone(
    store: &Store,
    url: &str,
    dir: PathBuf,
    branch: TenantId,
    label: &str,
) -> anyhow::Result<Client> {
    let client = Client::open(ClientConfig::new(&dir, url, simulated_keystore(&dir)?)).await?;
    if !client.is_enrolled() {
        let issued = admin::issue_enrollment_code(store, branch, label, 1, "demo").await?;
        client.enroll(&issued.code).await?;
    }
    Ok(client)
}

/// One branch's volunteers at work: members first (online), then a day of
/// offline work on two phones, then sync.
async fn run_branch(
    store: &Store,
    url: &str,
    root: &std::path::Path,
    branch: &Tenant,
    work: &BranchWork,
    today: time::Date,
) -> anyhow::Result<()> {
    let year = today.year();
    let dir = root.join(branch.id.to_string());
    let a = phone(store, url, dir.join("phone-a"), branch.id, "demo phone A").await?;
    let b = phone(store, url, dir.join("phone-b"), branch.id, "demo phone B").await?;

    let team_members: i64 = work.teams.iter().map(|t| t.1).sum();
    let count = work.households.max(team_members).max(work.placements);
    let mut members: Vec<RecordId> = Vec::with_capacity(count as usize);
    for i in 0..count {
        let mut kinds = std::collections::BTreeSet::new();
        if i < work.households {
            kinds.insert(MemberKind::Hardship);
        }
        kinds.insert(if i < work.placements {
            MemberKind::NoPost
        } else {
            MemberKind::Retired
        });
        if i % 9 == 0 {
            kinds.insert(MemberKind::Migrant);
        }
        members.push(
            a.add_member(NewMember {
                name: format!(
                    "{}成员{:04}",
                    branch.name.chars().take(2).collect::<String>(),
                    i + 1
                ),
                kinds,
                phone: Some(format!("139{:08}", i)),
                ..NewMember::default()
            })
            .await?,
        );
    }
    for (i, member) in members.iter().take(work.households as usize).enumerate() {
        a.open_hardship_entry(NewHardshipEntry {
            member_id: *member,
            kind: [
                HardshipKind::Illness,
                HardshipKind::LowIncome,
                HardshipKind::Unemployment,
            ][i % 3],
            opened_on: Date::from_ymd(year, 1, 1).context("date")?,
            needs: vec!["生活补助".into()],
        })
        .await?;
    }
    a.sync_now().await?;
    b.sync_now().await?;

    // Offline from here on: A visits the first half, B the rest.
    let aid = split(work.aid_fen, work.households as usize);
    for (i, (member, aid)) in members.iter().zip(aid).enumerate() {
        let phone = if i % 2 == 0 { &a } else { &b };
        let cash = aid * 7 / 10;
        // Special difficulties come when they come, through the year.
        let special = i % 4 == 0;
        phone
            .record_visit(NewVisit {
                date: if special {
                    date(today, i as i64)?
                } else {
                    holiday_visit_date(today, i as i64)?
                },
                member_id: *member,
                kind: if special {
                    VisitKind::SpecialDifficulty
                } else {
                    VisitKind::HolidayCondolence
                },
                visitors: vec![format!("志愿者{}", i % 7 + 1)],
                aid_cash: Fen(cash),
                aid_goods: Fen(aid - cash),
                goods_description: Some("米、面、油".into()),
                notes: None,
                follow_up: None,
            })
            .await?;
    }
    let levels = [
        TrainingLevel::District,
        TrainingLevel::SubDistrict,
        TrainingLevel::Community,
    ];
    for (i, attendance) in work.trainings.iter().copied().enumerate() {
        a.record_training(NewTraining {
            date: date(today, i as i64 * 3)?,
            level: levels[i % 3],
            topic: ["编织技能", "劳动法讲座", "仓储保管"][i % 3].into(),
            attendance,
            attendees: Vec::new(),
        })
        .await?;
    }
    for (i, member) in members.iter().take(work.placements as usize).enumerate() {
        a.record_placement(NewPlacement {
            date: date(today, i as i64)?,
            member_id: *member,
            employer: "区再就业服务中心推荐单位".into(),
            job: Some("保洁".into()),
        })
        .await?;
    }
    for (i, amount) in split(work.donations_fen, 10)
        .into_iter()
        .enumerate()
        .filter(|(_, a)| *a > 0)
    {
        b.record_fund_entry(NewFundEntry {
            date: date(today, i as i64)?,
            direction: FundDirection::Donation,
            amount: Fen(amount),
            member_id: members.get(i).copied(),
            purpose: None,
            note: Some("党员捐款".into()),
        })
        .await?;
    }
    b.record_fund_entry(NewFundEntry {
        date: date(today, 5)?,
        direction: FundDirection::Payment,
        amount: Fen::from_yuan(1_000),
        member_id: members.first().copied(),
        purpose: Some("schooling".into()),
        note: None,
    })
    .await?;
    let mut next_member = 0usize;
    for (t, (category, team_members, backbones, people)) in work.teams.iter().enumerate() {
        let team = b
            .create_team(NewTeam {
                name: format!("{category}队{}", t + 1),
                category: category.clone(),
                founded_on: None,
            })
            .await?;
        for m in 0..*team_members {
            let member = *members
                .get(next_member)
                .context("enough members for the teams")?;
            next_member += 1;
            b.add_to_team(
                team,
                TeamPerson::Member {
                    member_id: member,
                    backbone: m < *backbones,
                },
            )
            .await?;
        }
        for r in 0..(people - team_members) {
            b.add_to_team(
                team,
                TeamPerson::Resident {
                    name: format!("居民{:03}", r + 1),
                    backbone: false,
                },
            )
            .await?;
        }
    }

    // Signal again: both phones sync, twice so each hears the other.
    for _ in 0..2 {
        a.sync_now().await?;
        b.sync_now().await?;
    }
    if a.pending_changes().await? + b.pending_changes().await? > 0 {
        bail!("{}: changes left unacknowledged", branch.name);
    }
    Ok(())
}

async fn tenant(
    store: &Store,
    parent: Option<TenantId>,
    level: Level,
    name: &str,
) -> Result<Tenant, StoreError> {
    store.create_tenant(parent, level, name).await
}

/// Refuses, before the database is opened for writing, a server that does
/// not serve the database in `data_dir`: the demo writes the district and
/// the phones' enrollment codes there, and that server would know none of
/// them. A server must hold the directory (its lock), answer at `url` with
/// the database's storage id, and run the same migrations as this demo
/// (which would otherwise migrate the file under it).
async fn check_server(
    url: &str,
    data_dir: &std::path::Path,
    database: &std::path::Path,
) -> anyhow::Result<()> {
    if let Ok(free) = DataDirLock::acquire(data_dir, Hold::Serve) {
        drop(free);
        bail!(
            "no server runs on {}: start `doorstep serve` there, or leave out --server and the \
             demo serves itself",
            data_dir.display()
        );
    }
    let identity = Store::identify_sqlite_file(database)
        .await
        .with_context(|| format!("{} is not a Doorstep database", database.display()))?;
    let http = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()?;
    let health: serde_json::Value = http
        .get(format!("{url}/healthz"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .with_context(|| format!("no Doorstep server answers at {url}"))?
        .json()
        .await
        .with_context(|| format!("{url} does not answer as a Doorstep server"))?;
    if identity.storage_id.is_none()
        || health["storage_id"].as_str() != identity.storage_id.as_deref()
    {
        bail!(
            "the server at {url} does not serve the database in {}: pass the data directory it \
             runs on with --data-dir, or leave out --server and the demo serves itself",
            data_dir.display()
        );
    }
    if !identity.migrations_match {
        bail!(
            "the server on {} runs another version of Doorstep than this demo: build both from \
             one checkout",
            data_dir.display()
        );
    }
    Ok(())
}

/// The rollup as a table, its columns aligned on a terminal: widths are
/// counted in terminal columns, where a Chinese character takes two.
fn print_table(figures: &[Figures]) {
    let headings = [
        "单位",
        "走访",
        "户数",
        "帮扶金额(元)",
        "募集(元)",
        "培训",
        "培训人次",
        "再就业",
        "队伍",
        "类别",
        "队伍党员",
        "党员%",
        "骨干%",
    ];
    let rows: Vec<Vec<String>> = figures
        .iter()
        .map(|f| {
            vec![
                f.tenant.clone(),
                f.visits.to_string(),
                f.households_visited.to_string(),
                Fen(f.aid_total_fen).to_string(),
                Fen(f.fund_donations_fen).to_string(),
                f.trainings.to_string(),
                f.training_attendance.to_string(),
                f.placements.to_string(),
                f.teams.to_string(),
                f.team_categories.to_string(),
                f.team_members.to_string(),
                format!("{:.1}", f.team_member_pct),
                format!("{:.1}", f.team_backbone_pct),
            ]
        })
        .collect();
    for line in table_lines(&headings, &rows) {
        println!("{line}");
    }
}

/// `headings` and `rows` as lines of aligned columns: the first column
/// (names) to the left, the figures to the right.
fn table_lines(headings: &[&str], rows: &[Vec<String>]) -> Vec<String> {
    use unicode_width::UnicodeWidthStr;
    let widths: Vec<usize> = (0..headings.len())
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|cell| cell.width())
                .chain([headings[c].width()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>| {
        cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, width))| {
                let fill = " ".repeat(width.saturating_sub(cell.width()));
                if c == 0 {
                    format!("{cell}{fill}")
                } else {
                    format!("{fill}{cell}")
                }
            })
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_owned()
    };
    std::iter::once(line(headings.to_vec()))
        .chain(
            rows.iter()
                .map(|r| line(r.iter().map(String::as_str).collect())),
        )
        .collect()
}

/// Where the district's figures differ from the plan, if anywhere.
fn differences(plan: &Plan, total: &Figures) -> Vec<String> {
    let checks = [
        (
            "households visited",
            plan.households,
            total.households_visited,
        ),
        ("aid (fen)", plan.aid_fen, total.aid_total_fen),
        (
            "donations (fen)",
            plan.donations_fen,
            total.fund_donations_fen,
        ),
        ("trainings", plan.trainings, total.trainings),
        ("attendances", plan.attendance, total.training_attendance),
        ("placements", plan.placements, total.placements),
        ("teams", plan.teams, total.teams),
        ("categories", plan.categories, total.team_categories),
        ("members in teams", plan.team_members, total.team_members),
        ("people in teams", plan.team_people, total.team_people),
        ("backbones", plan.backbones, total.team_backbone_members),
    ];
    checks
        .iter()
        .filter(|(_, want, got)| want != got)
        .map(|(what, want, got)| format!("{what}: planned {want}, rollup {got}"))
        .collect()
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let plan = if args.scale <= 1 {
        Plan::REPORT
    } else {
        Plan::scaled(args.scale)
    };
    // By default UTC's date, which is never ahead of the organisation's
    // (China's, UTC+8); a day given may be the organisation's today.
    let real_today = time::OffsetDateTime::now_utc().date();
    let organisation_today = rollup::organisation_today(doorstep_server::store::now_ms());
    let today = match args.today {
        Some(day) if day > organisation_today => bail!(
            "--today {day} is after today ({organisation_today} in China): the demo dates nothing ahead"
        ),
        Some(day) => day.as_time(),
        None => real_today,
    };
    let year = today.year();
    // Everything is checked before anything is written: a demo pointed at
    // the wrong place must not leave half a district behind.
    let database = args.data_dir.join("doorstep.db");
    let _serving = match &args.server {
        Some(_) if !database.is_file() => bail!(
            "{} holds no Doorstep database: with --server, --data-dir names the data directory \
             that server runs on",
            args.data_dir.display()
        ),
        Some(url) => {
            check_server(url.trim_end_matches('/'), &args.data_dir, &database).await?;
            None
        }
        // Served here: nobody else may serve the directory meanwhile.
        None => Some(
            DataDirLock::acquire(&args.data_dir, Hold::Serve).with_context(|| {
                format!(
                    "to fill the server that runs on {}, pass its address with --server",
                    args.data_dir.display()
                )
            })?,
        ),
    };
    let store = Store::open(&database).await?;

    // A server: the one given, or one started here.
    let (url, server) = match &args.server {
        Some(url) => (url.trim_end_matches('/').to_owned(), None),
        None => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| {
                    format!(
                        "listening on {} (is a server already running? pass --server)",
                        args.listen
                    )
                })?;
            let url = format!("http://{}", listener.local_addr()?);
            let config = doorstep_server::Config::new(args.data_dir.join("doorstep.db"));
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let serving = store.clone();
            let task = tokio::spawn(async move {
                let shutdown = async {
                    let _ = stopped.await;
                };
                doorstep_server::serve(config, serving, listener, shutdown).await
            });
            (url, Some((stop, task)))
        }
    };

    eprintln!(
        "Doorstep demo: the Yanshan district's {year} at 1/{} of the report, on {url}",
        args.scale.max(1)
    );
    let district = tenant(&store, None, Level::District, "燕山工委").await?;
    let mut subs: Vec<Tenant> = Vec::new();
    let mut branches = Vec::new();
    for spec in BRANCHES {
        let sub = match subs.iter().find(|s| s.name == spec.sub_district) {
            Some(sub) => sub.clone(),
            None => {
                let sub = tenant(
                    &store,
                    Some(district.id),
                    Level::SubDistrict,
                    spec.sub_district,
                )
                .await?;
                subs.push(sub.clone());
                sub
            }
        };
        branches.push(tenant(&store, Some(sub.id), Level::Branch, spec.name).await?);
    }
    // The id's tail: a version 7 id begins with its creation time, which
    // two runs within a minute share; it ends in random bits.
    let id = district.id.to_string();
    let username = format!("demo-admin-{}", &id[id.len() - 8..]);
    // Random: the name can be worked out from the district's id, which
    // every account in the district sees.
    let password = doorstep_server::auth::Secret::generate_code();
    let password = password.expose();
    admin::create_user(
        &store,
        &username,
        password,
        Role::DistrictAdmin,
        district.id,
        "demo",
    )
    .await?;

    let devices = args.data_dir.join("demo-devices");
    for (branch, work) in branches.iter().zip(allocate(&plan)) {
        eprintln!(
            "  {}: 2 phones, {} households visited, {} trainings, {} placements, {} teams …",
            branch.name,
            work.households,
            work.trainings.len(),
            work.placements,
            work.teams.len()
        );
        run_branch(&store, &url, &devices, branch, &work, today).await?;
    }

    let period = Period::year(year).context("this year")?;
    let rollup = rollup::rollup(&store, &district, period).await?;
    println!("\n{} — {} 年汇总 (rollup for {year})", district.name, year);
    let mut rows = rollup.rows.clone();
    rows.push(rollup.total.clone());
    print_table(&rows);
    let wrong = differences(&plan, &rollup.total);
    if wrong.is_empty() {
        println!("\nThe district's figures match what the phones recorded.");
    } else {
        for w in &wrong {
            eprintln!("MISMATCH {w}");
        }
    }
    println!("Dashboard: {url}/dashboard  (log in as {username} / {password})");
    if args.json {
        println!(
            "{}",
            serde_json::json!({ "plan": plan, "total": rollup.total, "district": district.id.to_string() })
        );
    }
    if !wrong.is_empty() {
        bail!("the rollup does not match the plan");
    }
    if let Some((stop, task)) = server {
        if !args.exit {
            eprintln!("Serving until Ctrl-C.");
            let _ = tokio::signal::ctrl_c().await;
        }
        let _ = stop.send(());
        task.await??;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use unicode_width::UnicodeWidthStr;

    use super::{Holiday, holiday_visit_date};

    fn day(text: &str) -> time::Date {
        text.parse::<doorstep_protocol::Date>()
            .expect("a date")
            .as_time()
    }

    /// Holiday visits peak in the weeks before Spring Festival, fall in the
    /// other campaigns too, and none is dated after today or before the
    /// year, however early in the year today is.
    #[test]
    fn holiday_visits_peak_before_spring_festival_and_never_after_today() {
        let in_campaign = |today: time::Date, holiday: Holiday| {
            let campaign = holiday.campaign(today.year()).expect("a campaign");
            (0..400)
                .map(|i| holiday_visit_date(today, i).expect("a date"))
                .filter(|d| (campaign.from..=campaign.to).contains(d))
                .count()
        };
        let today = day("2026-12-01");
        let spring = in_campaign(today, Holiday::SpringFestival);
        assert_eq!(spring, 240, "six in ten");
        for other in [
            Holiday::PartyFounding,
            Holiday::MidAutumn,
            Holiday::NationalDay,
        ] {
            let n = in_campaign(today, other);
            assert!(n > 0 && n < spring, "{other:?}: {n}");
        }
        for today in [
            "2026-01-01",
            "2026-01-21",
            "2026-03-01",
            "2028-01-10",
            "2026-12-31",
        ] {
            let today = day(today);
            for i in 0..400 {
                let d = holiday_visit_date(today, i).expect("a date").as_time();
                assert!(d <= today && d.year() == today.year(), "{d} for {today}");
            }
        }
    }

    /// Chinese names and headings take two columns a character; every
    /// line of the table ends in the same terminal column.
    #[test]
    fn the_table_lines_up_on_a_terminal() {
        let rows = vec![
            vec!["向阳社区迎丰怡丽".to_owned(), "45".to_owned()],
            vec!["燕山工委".to_owned(), "1234567".to_owned()],
            vec!["x".to_owned(), "0".to_owned()],
        ];
        let lines = super::table_lines(&["单位", "走访"], &rows);
        assert_eq!(lines.len(), 4);
        let width = lines[0].width();
        for line in &lines {
            assert_eq!(line.width(), width, "{line:?}");
        }
        assert!(lines[2].starts_with("燕山工委 "));
    }
}
