//! The `doorstep` command line: `serve`, and operator commands that work on
//! the database directly (the operator on the server's machine is trusted
//! with all of it; remote administrators use the JSON API instead).

use std::io::{BufRead, IsTerminal};
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, CommandFactory, Parser, Subcommand};
use doorstep_protocol::{DeviceId, TenantId};
use serde::Serialize;

use crate::admin;
use crate::authority::{Action, escape_for_terminal};
use crate::config::{Config, SyncLimits};
use crate::store::{Location, Store};
use crate::tenancy::{Level, Role, TenantPath};

/// Doorstep: offline-first field data sync for a district's branches.
#[derive(Debug, Parser)]
#[command(
    name = "doorstep",
    version,
    after_help = "Start with `doorstep serve`: it prints what to do next.\n\
                  Every command but `serve` and `demo` works on the database directly; \
                  run it on the server's machine, with the same --data-dir."
)]
pub struct Cli {
    /// Where the embedded database lives (the file doorstep.db inside).
    #[arg(
        long,
        env = "DOORSTEP_DATA_DIR",
        default_value = "./doorstep-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// A PostgreSQL database to use instead of the embedded SQLite one
    /// (postgres://user:password@host/database, which must exist); the data
    /// directory is then not used.
    #[arg(
        long,
        env = "DOORSTEP_DATABASE_URL",
        hide_env_values = true,
        global = true
    )]
    pub database: Option<String>,
    /// Print results as JSON (times as epoch milliseconds) instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// Let an admin command make the data directory when there is none
    /// (without it, a wrong folder or a mistyped --data-dir is refused
    /// rather than given an empty database). `serve` always makes it.
    #[arg(long, global = true)]
    pub create: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync server.
    #[command(after_help = "Examples:\n  \
        doorstep serve\n  \
        doorstep serve --listen 0.0.0.0:8443 --tls-cert cert.pem --tls-key key.pem\n  \
        DOORSTEP_LISTEN=127.0.0.1:9090 doorstep --data-dir /var/lib/doorstep serve")]
    Serve(ServeArgs),
    /// Districts, sub-districts and branches.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// People who log in to the API.
    #[command(subcommand)]
    User(UserCommand),
    /// One-time codes that enroll a device to a branch.
    #[command(subcommand, name = "enroll-code")]
    EnrollCode(EnrollCodeCommand),
    /// Enrolled devices.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Users' login sessions.
    #[command(subcommand)]
    Session(SessionCommand),
    /// The audit log: who did what to people, devices and access, and every read of names.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Rebuild every projection (the rows rollups count) from the stored documents.
    Reproject,
    /// Write a consistent copy of the whole database to a new file, while
    /// the server keeps running.
    #[command(after_help = "Example:\n  \
        doorstep backup /var/backups/doorstep-2026-12-07.db")]
    Backup {
        /// The file to write; it must not exist yet.
        to: PathBuf,
    },
    /// Bring back from a backup every row the database lacks (a lost
    /// database: all of it), while the server keeps running; nothing the
    /// database has is changed or removed. The server notices within a
    /// second, and devices offer every document they hold.
    #[command(after_help = "Examples:\n  \
        doorstep restore /var/backups/doorstep-2026-12-07.db\n  \
        doorstep --data-dir /var/lib/doorstep --create restore /var/backups/doorstep-2026-12-07.db")]
    Restore {
        /// A file `doorstep backup` wrote.
        from: PathBuf,
    },
    /// Tell the servers and devices that the database was restored by other
    /// means than `doorstep restore` (pg_restore on PostgreSQL, a file
    /// copied back): it gets a new epoch; running servers drop what they
    /// held within a second, and devices offer every document they hold, so
    /// what reached the database after the backup comes back from them.
    #[command(after_help = "Example, after pg_restore:\n  \
        doorstep --database postgres://doorstep@db/doorstep mark-restored --how 'pg_restore of 2026-12-07'")]
    MarkRestored {
        /// What was restored, for the audit log.
        #[arg(long, default_value = "restored by hand")]
        how: String,
    },
    /// Fill a demo district modeled on the Yanshan report through simulated
    /// phones (runs `doorstep-demo`, built from client-sdk/demo).
    #[command(after_help = "Examples:\n  \
        doorstep demo --scale 10\n  \
        doorstep demo --server http://127.0.0.1:8080")]
    Demo {
        /// Arguments passed on to doorstep-demo, e.g. `--scale 10` or `--server URL`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address and port to listen on; 0.0.0.0:PORT for every interface.
    #[arg(long, env = "DOORSTEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, serve HTTPS and WSS.
    #[arg(long, env = "DOORSTEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, env = "DOORSTEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "DOORSTEP_MAX_MESSAGE_BYTES", value_parser = at_least_one::<usize>(), default_value_t = SyncLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Largest total of decompressed change bytes in one sync message
    /// (measured with a capped inflater before Automerge decodes anything).
    #[arg(long, env = "DOORSTEP_MAX_SYNC_CHANGE_BYTES", value_parser = at_least_one::<u64>(), default_value_t = SyncLimits::default().document.admission.max_inflated_bytes)]
    pub max_sync_change_bytes: u64,
    /// Most operations one sync message may carry.
    #[arg(long, env = "DOORSTEP_MAX_SYNC_OPS", value_parser = at_least_one::<u64>(), default_value_t = SyncLimits::default().document.admission.max_ops)]
    pub max_sync_ops: u64,
    /// Largest stored size of one document, in bytes; past it changes are refused.
    #[arg(long, env = "DOORSTEP_MAX_DOCUMENT_BYTES", value_parser = at_least_one::<u64>(), default_value_t = SyncLimits::default().document.max_document_bytes)]
    pub max_document_bytes: u64,
    /// Distinct Automerge actors one document may hold over its life; past
    /// it changes by new actors are refused with an error naming the limit.
    #[arg(long, env = "DOORSTEP_MAX_DOCUMENT_ACTORS", value_parser = at_least_one::<usize>(), default_value_t = SyncLimits::default().document.max_document_actors)]
    pub max_document_actors: usize,
    /// How deep below a document's root a change may nest an object.
    #[arg(long, env = "DOORSTEP_MAX_NESTING_DEPTH", value_parser = at_least_one::<usize>(), default_value_t = SyncLimits::default().document.max_depth)]
    pub max_nesting_depth: usize,
    /// Sustained messages per second one device may send.
    #[arg(long, env = "DOORSTEP_MESSAGES_PER_SECOND", value_parser = at_least_one::<u32>(), default_value_t = crate::budget::BudgetLimits::default().messages_per_second)]
    pub messages_per_second: u32,
    /// Messages one device may send in a burst.
    #[arg(long, env = "DOORSTEP_MESSAGE_BURST", value_parser = at_least_one::<u32>(), default_value_t = crate::budget::BudgetLimits::default().message_burst)]
    pub message_burst: u32,
    /// Open connections in all (lowered to fit the open-file limit).
    #[arg(long, env = "DOORSTEP_MAX_CONNECTIONS", value_parser = at_least_one::<usize>(), default_value_t = crate::budget::ConnectionLimits::default().total)]
    pub max_connections: usize,
    /// Open connections from one address that no device has authenticated
    /// (raise it behind a reverse proxy or a large NAT).
    #[arg(long, env = "DOORSTEP_MAX_CONNECTIONS_PER_ADDRESS", value_parser = at_least_one::<usize>(), default_value_t = crate::budget::ConnectionLimits::default().per_address)]
    pub max_connections_per_address: usize,
    /// Live /sync sockets of one device; past it the oldest closes.
    #[arg(long, env = "DOORSTEP_SOCKETS_PER_DEVICE", value_parser = at_least_one::<usize>(), default_value_t = crate::budget::BudgetLimits::default().sockets_per_device)]
    pub sockets_per_device: usize,
    /// Bytes queued to send to all connections together.
    #[arg(long, env = "DOORSTEP_MAX_QUEUED_BYTES", value_parser = at_least_one::<usize>(), default_value_t = crate::budget::OutboxLimits::default().total)]
    pub max_queued_bytes: usize,
}

/// A limit of zero would refuse everything (`--max-connections 0` closes
/// every connection at accept), so every limit flag takes 1 or more.
fn at_least_one<T>() -> clap::builder::RangedU64ValueParser<T>
where
    T: TryFrom<u64> + Clone + Send + Sync + 'static,
    <T as TryFrom<u64>>::Error: std::fmt::Display + Send + Sync + 'static,
{
    clap::builder::RangedU64ValueParser::<T>::new().range(1..)
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a district, a sub-district under a district, or a branch under a sub-district.
    #[command(after_help = "Examples:\n  \
        doorstep tenant create --level district --name \"Yanshan\"\n  \
        doorstep tenant create --level sub_district --name \"Xiangyang\" --parent <district id>\n  \
        doorstep tenant create --level branch --name \"Yingfeng-Yili\" --parent <sub-district id>")]
    Create {
        /// Which level the new tenant is.
        #[arg(long, value_enum)]
        level: Level,
        /// Its name, as officials know it.
        #[arg(long)]
        name: String,
        /// The parent tenant's id (not for a district).
        #[arg(long)]
        parent: Option<TenantId>,
    },
    /// List every tenant.
    List,
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Create a user. The password comes from DOORSTEP_PASSWORD, or is asked
    /// for (without echo on a terminal; one line when piped).
    #[command(after_help = "Examples:\n  \
        doorstep user create --username admin --role district_admin --tenant <district id>\n  \
        DOORSTEP_PASSWORD='a long password' doorstep user create --username admin --role district_admin --tenant <district id>")]
    Create {
        /// The login name.
        #[arg(long)]
        username: String,
        /// What the user may do; a role belongs to its tenant's level.
        #[arg(long, value_enum)]
        role: Role,
        /// The id of the tenant the user belongs to.
        #[arg(long)]
        tenant: TenantId,
    },
    /// Invite a user: prints a one-time activation code with which they set
    /// their own password (POST /api/v1/activate).
    #[command(after_help = "Examples:\n  \
        doorstep user invite --username wang --role branch_secretary --tenant <branch id>\n  \
        doorstep user invite --username li --role volunteer --tenant <branch id> --ttl-hours 24")]
    Invite {
        /// The login name.
        #[arg(long)]
        username: String,
        /// What the user may do; a role belongs to its tenant's level.
        #[arg(long, value_enum)]
        role: Role,
        /// The id of the tenant the user belongs to.
        #[arg(long)]
        tenant: TenantId,
        /// Hours until the activation code expires.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u32,
    },
    /// Invitations waiting for approval (with --all, every invitation).
    Invitations {
        /// Every invitation, decided or not.
        #[arg(long)]
        all: bool,
    },
    /// Approve an invitation an upper level made for a branch secretary
    /// (for a branch that has no secretary to approve it).
    Approve {
        /// The invitation's id (from `doorstep user invitations`).
        id: uuid::Uuid,
    },
    /// Deny such an invitation.
    Deny {
        /// The invitation's id (from `doorstep user invitations`).
        id: uuid::Uuid,
    },
    /// List every user.
    List,
    /// Disable a user: no more logins, and their sessions end at once.
    Disable {
        /// The login name.
        #[arg(long)]
        username: String,
    },
    /// Let a disabled user log in again.
    Enable {
        /// The login name.
        #[arg(long)]
        username: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum SessionCommand {
    /// List live login sessions (never their tokens).
    List {
        /// Only this user's.
        #[arg(long)]
        username: Option<String>,
    },
    /// End a session at once.
    Revoke {
        /// The session's id (from `doorstep session list`).
        id: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum EnrollCodeCommand {
    /// Issue a code; the device exchanges it at POST /api/v1/enroll.
    #[command(after_help = "Examples:\n  \
        doorstep enroll-code create --branch <branch id> --label \"Li Na's phone\"\n  \
        doorstep enroll-code create --branch <branch id> --label \"spare tablet\" --ttl-hours 8")]
    Create {
        /// The id of the branch the device will belong to.
        #[arg(long)]
        branch: TenantId,
        /// What the device is, e.g. "Li Na's phone".
        #[arg(long)]
        label: String,
        /// Hours until the code expires.
        #[arg(long, default_value_t = 72)]
        ttl_hours: u32,
    },
    /// Codes upper levels asked for that wait for the branch's approval
    /// (with --all, every code).
    Requests {
        /// Every code, decided or not.
        #[arg(long)]
        all: bool,
    },
    /// Approve a requested code (for a branch that has no secretary to approve it).
    Approve {
        /// The code's id (from `doorstep enroll-code requests`), not the code itself.
        id: uuid::Uuid,
    },
    /// Deny a requested code.
    Deny {
        /// The code's id (from `doorstep enroll-code requests`), not the code itself.
        id: uuid::Uuid,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Entries, newest first.
    #[command(after_help = "Examples:\n  \
        doorstep audit list\n  \
        doorstep audit list --branch <branch id> --limit 50\n  \
        doorstep audit list --before <the last id shown>   # the next page\n  \
        doorstep audit list --csv > audit.csv")]
    List {
        /// Only entries about this tenant and the tenants below it.
        #[arg(long)]
        branch: Option<TenantId>,
        /// Most entries to show.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// Only entries older than this id (the next page).
        #[arg(long)]
        before: Option<i64>,
        /// Print CSV (UTF-8 with a byte-order mark) instead.
        #[arg(long)]
        csv: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum DeviceCommand {
    /// List every device.
    List,
    /// Revoke a device at once; a running server closes its sockets within a second.
    #[command(after_help = "Examples:\n  \
        doorstep device list\n  \
        doorstep device revoke <device id>")]
    Revoke {
        /// The device's id (from `doorstep device list`).
        id: DeviceId,
    },
    /// The documents a device should sync.
    Documents {
        /// The device's id (from `doorstep device list`).
        id: DeviceId,
    },
}

impl Cli {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("doorstep.db")
    }

    /// The database this run uses: `--database`, else the SQLite file in
    /// the data directory.
    pub fn location(&self) -> anyhow::Result<Location> {
        match &self.database {
            Some(url) if Location::is_postgres_url(url) => Ok(Location::Postgres(url.clone())),
            Some(other) => anyhow::bail!(
                "--database (DOORSTEP_DATABASE_URL) takes a postgres:// URL, not {other:?}; \
                 the SQLite database is chosen with --data-dir"
            ),
            None => Ok(Location::Sqlite(self.database_path())),
        }
    }

    pub fn server_config(&self, args: &ServeArgs) -> anyhow::Result<Config> {
        let mut config = Config::new(self.location()?);
        config.tls_cert = args.tls_cert.clone();
        config.tls_key = args.tls_key.clone();
        let defaults = SyncLimits::default();
        let mut document = defaults.document;
        document.admission.max_inflated_bytes = args.max_sync_change_bytes;
        document.admission.max_ops = args.max_sync_ops;
        document.max_document_bytes = args.max_document_bytes;
        document.max_document_actors = args.max_document_actors;
        document.max_depth = args.max_nesting_depth;
        config.limits = SyncLimits {
            max_message_bytes: args.max_message_bytes,
            document,
        };
        let budget = crate::budget::BudgetLimits::default();
        config.budgets = crate::budget::Budgets::new(crate::budget::BudgetLimits {
            messages_per_second: args.messages_per_second,
            message_burst: args.message_burst,
            sockets_per_device: args.sockets_per_device,
            connections: crate::budget::ConnectionLimits {
                total: args.max_connections,
                per_address: args.max_connections_per_address,
                ..budget.connections
            },
            outboxes: crate::budget::OutboxLimits {
                total: args.max_queued_bytes,
                ..budget.outboxes
            },
            ..budget
        });
        Ok(config)
    }
}

/// Dependencies that print what crosses the wire at `trace`: tungstenite
/// prints every frame's payload (sync messages carry names and phones) and
/// a client's handshake request. Held at `debug` whatever `RUST_LOG` asks;
/// the server's own events never carry payloads.
const WIRE_CONTENT_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

fn is_wire_content(meta: &tracing::Metadata<'_>) -> bool {
    *meta.level() == tracing::Level::TRACE
        && WIRE_CONTENT_TARGETS.iter().any(|target| {
            meta.target()
                .strip_prefix(target)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        })
}

/// The process's log: `RUST_LOG` (default `info`) to stderr, never wire
/// content (`WIRE_CONTENT_TARGETS`); one JSON object a line with
/// `DOORSTEP_LOG_FORMAT=json`, for a log shipper. (Read from the
/// environment: logging starts before the command line is parsed, so that
/// parsing can log.)
fn init_logging() {
    use tracing_subscriber::Layer;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let json = std::env::var("DOORSTEP_LOG_FORMAT").is_ok_and(|f| f.eq_ignore_ascii_case("json"));
    let lines = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let lines = if json {
        lines.json().boxed()
    } else {
        lines.boxed()
    };
    tracing_subscriber::registry()
        .with(
            lines
                .with_filter(filter)
                .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                    !is_wire_content(meta)
                })),
        )
        .init();
}

/// Parses the command line and runs it: the whole of the `doorstep` binary.
pub async fn main() -> anyhow::Result<()> {
    init_logging();
    let cli = Cli::parse();
    if let Command::Demo { args } = &cli.command {
        return run_demo(&cli, args);
    }
    // Taken before the database is opened: a second server on this
    // directory is refused before it touches anything. Admin commands run
    // beside a server and take none, and make no data directory unasked.
    let location = cli.location()?;
    let _serving = match &cli.command {
        // PostgreSQL has no data directory: several nodes serve one
        // database, and the admin commands run beside them.
        _ if matches!(location, Location::Postgres(_)) => {
            tracing::info!(database = %location, "using the database");
            None
        }
        Command::Serve(_) => Some(crate::data_dir::DataDirLock::acquire(
            &cli.data_dir,
            crate::data_dir::Hold::Serve,
        )?),
        _ => {
            // A folder that exists but holds other things and no database
            // is a wrong --data-dir too (`.`, a parent folder); an empty one
            // is a directory made for Doorstep.
            let holds_other_things =
                std::fs::read_dir(&cli.data_dir).is_ok_and(|mut entries| entries.next().is_some());
            if !cli.create && holds_other_things && !cli.database_path().is_file() {
                anyhow::bail!(
                    "{} holds no Doorstep database (doorstep.db): name the data directory with \
                     --data-dir or DOORSTEP_DATA_DIR, or add --create to make one there",
                    cli.data_dir.display()
                );
            }
            if !cli.create && !cli.data_dir.is_dir() {
                anyhow::bail!(
                    "there is no data directory at {} (doorstep serve makes it on its first start): \
                     run this where the server runs, name it with --data-dir or DOORSTEP_DATA_DIR, \
                     or add --create to make an empty one",
                    cli.data_dir.display()
                );
            }
            tracing::info!(database = %cli.database_path().display(), "using the database");
            None
        }
    };
    let store = match Store::open_at(&location).await {
        Ok(store) => store,
        // A read-only folder fails already here (SQLite cannot create the
        // write-ahead log beside the file): the same words as a read-only
        // file found by the probe below.
        Err(e) if e.is_read_only() || e.is_disk_full() => {
            let why = cannot_write(&cli, &e);
            return Err(anyhow::Error::new(e).context(why));
        }
        Err(e) => {
            return Err(
                anyhow::Error::new(e).context(format!("cannot open the database {location}"))
            );
        }
    };
    match &cli.command {
        Command::Serve(args) => {
            let config = cli.server_config(args)?;
            // Everything that can stop start-up is checked before the
            // "listening" line: an operator (or a supervisor reading our
            // output) must never see it from a server that then exits.
            // A committed write (readiness's own probe): SQLite opens a file
            // it may not write read-only without a word, migrations already
            // applied write nothing, and in WAL mode even `begin immediate`
            // passes on such a file.
            if let Err(e) = store.probe_write().await {
                let why = cannot_write(&cli, &e);
                return Err(anyhow::Error::new(e).context(why));
            }
            crate::check_tls(&config)?;
            let listener = bind(args.listen).await?;
            let tls = config.tls_cert.is_some();
            println!(
                "{}",
                first_steps(&store, listener.local_addr()?, tls).await?
            );
            crate::serve(config, store, listener, shutdown_signal()).await?;
            Ok(())
        }
        _ => run_admin(&cli, &store).await,
    }
}

/// What an operator is told when the database cannot be written: a full
/// disk is named as such (it was told to check permissions), anything
/// else points at the permissions.
fn cannot_write(cli: &Cli, e: &crate::store::StoreError) -> String {
    let location = cli.location().map_or_else(
        |_| cli.database_path().display().to_string(),
        |l| l.to_string(),
    );
    if e.is_disk_full() {
        format!(
            "the disk holding the database {location} is full: free space on it and start again"
        )
    } else if cli.database.is_some() {
        format!(
            "the database {location} cannot be written (check the role's privileges and that the server is not read-only)"
        )
    } else {
        format!(
            "the database {location} cannot be written (check the permissions of it and of {})",
            cli.data_dir.display()
        )
    }
}

/// Why `serve` could not take its address.
#[derive(Debug, thiserror::Error)]
#[error(
    "cannot listen on {addr}: {reason}\n\
     choose another address with --listen HOST:PORT or DOORSTEP_LISTEN=HOST:PORT"
)]
pub struct BindError {
    pub addr: SocketAddr,
    pub reason: String,
    #[source]
    pub source: std::io::Error,
}

/// Binds the listener, naming the address and how to pick another when
/// that fails (the bare "Address already in use" names neither).
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError {
            addr,
            reason: match source.kind() {
                std::io::ErrorKind::AddrInUse => {
                    "the address is already in use (is another doorstep running?)".to_owned()
                }
                std::io::ErrorKind::PermissionDenied => {
                    "permission denied (ports below 1024 need privileges)".to_owned()
                }
                _ => source.to_string(),
            },
            source,
        })
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// `doorstep demo` runs the `doorstep-demo` binary beside this one (or on
/// PATH), like `git foo` runs `git-foo`: the demo drives the device SDK,
/// which the server itself must not depend on.
fn run_demo(cli: &Cli, args: &[String]) -> anyhow::Result<()> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join("doorstep-demo")))
        .filter(|path| path.exists());
    let program = beside.unwrap_or_else(|| "doorstep-demo".into());
    let status = std::process::Command::new(&program)
        .arg("--data-dir")
        .arg(&cli.data_dir)
        .args(args)
        .status()
        .map_err(|e| {
            anyhow::anyhow!(
                "could not run {}: {e} (build it with `cargo build --release -p doorstep-demo`)",
                program.display()
            )
        })?;
    if !status.success() {
        anyhow::bail!("the demo failed ({status})");
    }
    Ok(())
}

/// What a new operator should do next, printed when `serve` starts.
pub async fn first_steps(store: &Store, listen: SocketAddr, tls: bool) -> anyhow::Result<String> {
    let scheme = if tls { "https" } else { "http" };
    let mut text = format!(
        "Doorstep is listening on {scheme}://{listen} (health: {scheme}://{listen}/healthz)\n"
    );
    if store.user_count().await? == 0 {
        text.push_str(
            "No users yet. Create the district and its first admin (in another terminal):\n\
             \x20 doorstep tenant create --level district --name \"Yanshan\"\n\
             \x20 DOORSTEP_PASSWORD='choose-a-password' doorstep user create --username admin --role district_admin --tenant <district id>\n\
             Then add sub-districts and branches, and enroll a device:\n\
             \x20 doorstep tenant create --level sub_district --name \"Xiangyang\" --parent <district id>\n\
             \x20 doorstep tenant create --level branch --name \"Yingfeng-Yili\" --parent <sub-district id>\n\
             \x20 doorstep enroll-code create --branch <branch id> --label \"volunteer phone\"\n",
        );
    }
    Ok(text)
}

fn print<T: Serialize>(
    json: bool,
    value: &T,
    human: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(value)?);
    } else {
        println!("{}", human(value));
    }
    Ok(())
}

/// The password for `user create`: DOORSTEP_PASSWORD, else asked for. On a
/// terminal it is read with echo off (rpassword: small, maintained, and it
/// restores the terminal's mode itself on every path) and asked twice, as a
/// typo nobody saw would lock the account out; from a pipe it is one line,
/// so scripts keep working.
fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("DOORSTEP_PASSWORD") {
        return Ok(password);
    }
    if std::io::stdin().is_terminal() {
        let password = rpassword::prompt_password("password: ")
            .context("cannot read the password from the terminal")?;
        let again = rpassword::prompt_password("the same password again: ")
            .context("cannot read the password from the terminal")?;
        if password != again {
            anyhow::bail!("the two passwords differ; nothing was created");
        }
        return Ok(password);
    }
    eprintln!("password (one line on standard input):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
}

/// A stored time (epoch milliseconds) as RFC 3339 UTC, for text output;
/// `--json` keeps the number.
pub fn utc(ms: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| ms.to_string())
}

/// The whole command tree, for tests that check every argument is explained.
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs an operator command against the database.
pub async fn run_admin(cli: &Cli, store: &Store) -> anyhow::Result<()> {
    const BY: &str = "cli";
    match &cli.command {
        Command::Serve(_) | Command::Demo { .. } => anyhow::bail!("run by cli::main"),
        Command::Tenant(TenantCommand::Create {
            level,
            name,
            parent,
        }) => {
            let parent = match parent {
                Some(id) => Some(
                    store
                        .tenant(*id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no tenant {id}"))?,
                ),
                None => None,
            };
            let permit = admin::authorize_operator(
                store,
                Action::CreateTenant {
                    parent: parent.as_ref(),
                },
            )
            .await?;
            let tenant =
                admin::create_tenant(store, &permit, parent.as_ref(), *level, name).await?;
            print(cli.json, &tenant, |t| {
                format!("created {} {} ({})", t.level.as_str(), t.id, t.name)
            })
        }
        Command::Tenant(TenantCommand::List) => {
            let mut tenants = Vec::new();
            for root in store.tenants_within_roots().await? {
                tenants.extend(store.tenants_within(&root).await?);
            }
            print(cli.json, &tenants, |ts| {
                ts.iter()
                    .map(|t| {
                        format!(
                            "{}{} {} {}",
                            "  ".repeat(t.path.depth() - 1),
                            t.id,
                            t.level.as_str(),
                            escape_for_terminal(&t.name)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::User(UserCommand::Create {
            username,
            role,
            tenant,
        }) => {
            let password = read_password()?;
            let user = admin::create_user(store, username, &password, *role, *tenant, BY).await?;
            print(cli.json, &user, |u| {
                format!("created user {} ({})", u.username, u.role.as_str())
            })
        }
        Command::User(UserCommand::List) => {
            let mut users = Vec::new();
            for root in store.tenants_within_roots().await? {
                users.extend(store.users_within(&root).await?);
            }
            print(cli.json, &users, |us| {
                us.iter()
                    .map(|u| {
                        format!(
                            "{} {} {}",
                            escape_for_terminal(&u.username),
                            u.role.as_str(),
                            u.tenant_id
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::User(UserCommand::Disable { username })
        | Command::User(UserCommand::Enable { username }) => {
            let disable = matches!(&cli.command, Command::User(UserCommand::Disable { .. }));
            let account = store
                .login_account(username)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no user {username}"))?;
            // The operator is outside the chain being audited: they may
            // disable anyone, witnesses included, and the entry says so.
            let permit = admin::authorize_operator(
                store,
                Action::SetUserDisabled {
                    target: &account.user,
                    disable,
                },
            )
            .await?;
            let (changed, ended) = admin::set_user_disabled(
                store,
                &permit,
                &account.user,
                disable,
                crate::store::now_ms(),
            )
            .await?;
            let value = serde_json::json!({
                "username": account.user.username,
                "disabled": disable,
                "changed": changed,
                "ended_sessions": ended,
            });
            print(cli.json, &value, |_| match (disable, changed) {
                (true, true) => format!("disabled {username}; ended {ended} sessions"),
                (true, false) => format!("{username} was already disabled"),
                (false, true) => format!("enabled {username}"),
                (false, false) => format!("{username} was not disabled"),
            })
        }
        Command::Session(SessionCommand::List { username }) => {
            let user = match username {
                Some(name) => Some(
                    store
                        .login_account(name)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no user {name}"))?
                        .user
                        .id,
                ),
                None => None,
            };
            // The default idle timeout: a server configured otherwise may
            // have ended some of these already.
            let idle = Config::new(cli.database_path()).session_idle;
            let sessions = store.sessions(user, crate::store::now_ms(), idle).await?;
            print(cli.json, &sessions, |ss| {
                ss.iter()
                    .map(|s| {
                        format!(
                            "{} {} from {} last used {} expires {}",
                            s.id,
                            escape_for_terminal(&s.username),
                            s.address.as_deref().unwrap_or("?"),
                            utc(s.last_used_at),
                            utc(s.expires_at)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Session(SessionCommand::Revoke { id }) => {
            if !store.revoke_session(id, None, BY).await? {
                anyhow::bail!("no session {id}");
            }
            print(cli.json, &serde_json::json!({ "revoked": true }), |_| {
                format!("ended session {id}")
            })
        }
        Command::EnrollCode(EnrollCodeCommand::Create {
            branch,
            label,
            ttl_hours,
        }) => {
            let issued =
                admin::issue_enrollment_code(store, *branch, label, *ttl_hours, BY).await?;
            print(cli.json, &issued, |i| {
                let code = &i.code;
                format!(
                    "enrollment code {code} for \"{}\" (one use, expires in {ttl_hours} h)\n\
                     a device exchanges it with: POST /api/v1/enroll {{\"code\": \"{code}\"}}",
                    escape_for_terminal(i.details.label.as_deref().unwrap_or(""))
                )
            })
        }
        Command::EnrollCode(EnrollCodeCommand::Requests { all }) => {
            let mut codes = Vec::new();
            for root in store.tenants_within_roots().await? {
                codes.extend(store.enrollment_codes_within(&root, !*all).await?);
            }
            print(cli.json, &codes, |cs| {
                cs.iter()
                    .map(|c| {
                        format!(
                            "{} {} {:?} \"{}\" asked by {}",
                            c.id,
                            c.branch_id,
                            c.status,
                            escape_for_terminal(c.label.as_deref().unwrap_or("")),
                            escape_for_terminal(&c.created_by)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::EnrollCode(EnrollCodeCommand::Approve { id })
        | Command::EnrollCode(EnrollCodeCommand::Deny { id }) => {
            let approve = matches!(
                &cli.command,
                Command::EnrollCode(EnrollCodeCommand::Approve { .. })
            );
            let code = store
                .enrollment_code(*id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no enrollment code {id}"))?;
            let permit = admin::authorize_operator(
                store,
                Action::DecideEnrollmentRequest {
                    code: &code,
                    approve,
                },
            )
            .await?;
            let decided = admin::decide_enrollment_code(store, &permit, &code, approve)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{id} is not waiting for a decision"))?;
            print(cli.json, &decided, |c| match &c.code {
                Some(code) => format!(
                    "{} is now {:?}; its enrollment code is {code} (one use): give it to the device, \
                     which exchanges it with POST /api/v1/enroll {{\"code\": \"{code}\"}}",
                    c.details.id, c.details.status
                ),
                None => format!("{} is now {:?}", c.details.id, c.details.status),
            })
        }
        Command::User(UserCommand::Invite {
            username,
            role,
            tenant,
            ttl_hours,
        }) => {
            let tenant = store
                .tenant(*tenant)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no tenant {tenant}"))?;
            let permit = admin::authorize_operator(
                store,
                Action::InviteUser {
                    tenant: &tenant,
                    role: *role,
                },
            )
            .await?;
            let invited =
                admin::invite_user(store, &permit, username, *role, &tenant, *ttl_hours).await?;
            print(cli.json, &invited, |i| {
                let code = i.activation_code.as_deref().unwrap_or("?");
                format!(
                    "invited {} ({}); activation code {code} (one use, expires in {ttl_hours} h)\n\
                     the invitee sets a password with: POST /api/v1/activate {{\"code\": \"{code}\", \"password\": \"...\"}}",
                    escape_for_terminal(&i.user.username),
                    i.user.role.as_str(),
                )
            })
        }
        Command::User(UserCommand::Invitations { all }) => {
            let mut invitations = Vec::new();
            for root in store.tenants_within_roots().await? {
                invitations.extend(store.invitations_within(&root, !*all).await?);
            }
            print(cli.json, &invitations, |is| {
                is.iter()
                    .map(|i| {
                        format!(
                            "{} {} {} {:?} invited by {}",
                            i.id,
                            escape_for_terminal(&i.username),
                            i.role.as_str(),
                            i.status,
                            escape_for_terminal(&i.created_by)
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::User(UserCommand::Approve { id }) | Command::User(UserCommand::Deny { id }) => {
            let approve = matches!(&cli.command, Command::User(UserCommand::Approve { .. }));
            let invitation = store
                .invitation(*id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no invitation {id}"))?;
            let permit = admin::authorize_operator(
                store,
                Action::DecideInvitation {
                    invitation: &invitation,
                    approve,
                },
            )
            .await?;
            let decided = admin::decide_invitation(store, &permit, &invitation, approve)
                .await?
                .ok_or_else(|| anyhow::anyhow!("{id} is not waiting for a decision"))?;
            print(cli.json, &decided, |d| {
                let i = &d.invitation;
                let name = escape_for_terminal(&i.username);
                match &d.activation_code {
                    Some(code) => format!(
                        "invitation of {name} is now {:?}; activation code {code} (one use): give it to \
                         {name}, who sets a password with POST /api/v1/activate {{\"code\": \"{code}\", \"password\": \"...\"}}",
                        i.status
                    ),
                    None => format!("invitation of {name} is now {:?}", i.status),
                }
            })
        }
        Command::Audit(AuditCommand::List {
            branch,
            limit,
            before,
            csv,
        }) => {
            let scope = match branch {
                Some(id) => Some(
                    store
                        .tenant(*id)
                        .await?
                        .ok_or_else(|| anyhow::anyhow!("no tenant {id}"))?
                        .path,
                ),
                None => None,
            };
            let entries = store
                .audit_entries(&crate::store::AuditQuery {
                    scope,
                    before: *before,
                    limit: *limit,
                })
                .await?;
            if *csv {
                // A file keeps the text as stored; a terminal shows it
                // escaped, like the listing below.
                let entries = if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                    entries.into_iter().map(escaped_entry).collect()
                } else {
                    entries
                };
                print!("{}", crate::rollup::csv::to_csv(&entries)?);
                return Ok(());
            }
            print(cli.json, &entries, |es| {
                es.iter()
                    .map(|e| {
                        let at = time::OffsetDateTime::from_unix_timestamp(e.at / 1000)
                            .ok()
                            .and_then(|t| {
                                t.format(&time::format_description::well_known::Rfc3339)
                                    .ok()
                            })
                            .unwrap_or_else(|| e.at.to_string());
                        // Every field is data someone typed (a grant's
                        // reason, a username, a label): escaped, so that
                        // no control character in it can hide or rewrite
                        // a row on the operator's terminal.
                        format!(
                            "{} {at} {} {} {} {} {}",
                            e.id,
                            e.outcome.as_str(),
                            escape_for_terminal(&e.actor),
                            escape_for_terminal(&e.action),
                            escape_for_terminal(&e.subject),
                            escape_for_terminal(e.detail.as_deref().unwrap_or(""))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Reproject => {
            let documents = crate::projection::reproject(store).await?;
            print(
                cli.json,
                &serde_json::json!({ "documents": documents }),
                |_| format!("reprojected {documents} documents"),
            )
        }
        Command::Backup { to } => {
            let summary = store.backup_to(to).await?;
            print(cli.json, &summary, |s| {
                format!(
                    "backed up {} documents, {} tenants and {} devices to {} ({} bytes)",
                    s.documents,
                    s.tenants,
                    s.devices,
                    s.path.display(),
                    s.bytes
                )
            })
        }
        Command::Restore { from } => {
            store.sqlite_file("doorstep restore")?;
            // One restore at a time: the staging copy has one name, and a
            // copy a killed restore left behind is removed (restore_from
            // clears it first).
            let _restoring = crate::data_dir::DataDirLock::acquire(
                &cli.data_dir,
                crate::data_dir::Hold::Restore,
            )?;
            let staging = cli.data_dir.join("restore-staging.db");
            let summary = store
                .restore_from(from, &staging)
                .await
                .context("nothing was restored")?;
            print(cli.json, &summary, |s| {
                format!(
                    "restored from {}: {} rows the database lacked were added ({} documents gained changes); \
                     nothing it had was changed\n\
                     a running server drops what it held within a second and re-projects; \
                     devices then offer every document they hold",
                    s.from.display(),
                    s.rows_added,
                    s.documents_gaining_changes
                )
            })
        }
        Command::MarkRestored { how } => {
            let marked = store.mark_restored(how).await?;
            print(cli.json, &marked, |m| {
                format!(
                    "the database is in a new epoch ({}): running servers drop what they held \
                     within a second, and devices offer every document they hold\n\
                     {} login sessions were ended: everybody logs in again\n\
                     the restore undid every device revocation, disabled account and password \
                     change made after the backup: make them again",
                    m.epoch, m.sessions_ended
                )
            })
        }
        Command::Device(DeviceCommand::List) => {
            let mut devices = Vec::new();
            for root in store.tenants_within_roots().await? {
                devices.extend(store.devices_within(&root).await?);
            }
            print(cli.json, &devices, |ds| {
                ds.iter()
                    .map(|d| {
                        let state = if d.revoked_at.is_some() {
                            "revoked"
                        } else {
                            "active"
                        };
                        let seen = d.last_seen_at.map_or_else(|| "never".to_owned(), utc);
                        format!(
                            "{} {} {} last seen {} {}",
                            d.id,
                            d.branch_id,
                            state,
                            seen,
                            escape_for_terminal(d.label.as_deref().unwrap_or(""))
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
        Command::Device(DeviceCommand::Revoke { id }) => {
            let device = store
                .device(*id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no device {id}"))?;
            let permit =
                admin::authorize_operator(store, Action::RevokeDevice { device: &device }).await?;
            let revoked = admin::revoke_device_with(store, &permit, &device).await?;
            print(cli.json, &serde_json::json!({ "revoked": revoked }), |_| {
                if revoked {
                    format!("revoked {id}; a running server closes its connections within a second")
                } else {
                    format!("{id} was already revoked")
                }
            })
        }
        Command::Device(DeviceCommand::Documents { id }) => {
            let device = store
                .device(*id)
                .await?
                .ok_or_else(|| anyhow::anyhow!("no device {id}"))?;
            let documents = admin::device_documents(store, &device).await?;
            print(cli.json, &documents, |ds| {
                ds.iter()
                    .map(|d| {
                        format!(
                            "{} {:?} {}",
                            d.url,
                            d.kind,
                            d.month.as_deref().unwrap_or("")
                        )
                    })
                    .collect::<Vec<_>>()
                    .join("\n")
            })
        }
    }
}

/// An audit entry with every field someone typed escaped for a terminal.
fn escaped_entry(mut e: crate::store::AuditRecord) -> crate::store::AuditRecord {
    let escape = |text: &mut String| *text = escape_for_terminal(text).into_owned();
    escape(&mut e.actor);
    escape(&mut e.action);
    escape(&mut e.subject);
    if let Some(detail) = e.detail.as_mut() {
        escape(detail);
    }
    e
}

impl Store {
    /// The paths of every district (root tenant).
    pub async fn tenants_within_roots(&self) -> Result<Vec<TenantPath>, crate::store::StoreError> {
        let paths: Vec<String> =
            sqlx::query_scalar("select path from tenants where parent_id is null order by path")
                .fetch_all(self.every_branch())
                .await?;
        paths
            .iter()
            .map(|p| p.parse().map_err(crate::store::StoreError::Corrupt))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// clap's own consistency checks (duplicate flags, bad `requires`),
    /// here so a `--lib` run finds them; the e2e test `operator::
    /// every_command_and_argument_has_help` checks the help text itself.
    #[test]
    fn the_command_line_is_consistent() {
        command().debug_assert();
    }

    #[test]
    fn limit_flags_refuse_zero_with_a_named_error() {
        for flag in [
            "--max-connections",
            "--max-queued-bytes",
            "--messages-per-second",
        ] {
            let err = Cli::try_parse_from(["doorstep", "serve", flag, "0"])
                .expect_err("a zero limit is refused");
            assert!(err.to_string().contains(flag), "{err}");
        }
        let cli = Cli::try_parse_from(["doorstep", "serve", "--max-connections", "1"])
            .expect("one is a limit");
        let Command::Serve(args) = cli.command else {
            panic!("serve parses as serve");
        };
        assert_eq!(args.max_connections, 1);
    }

    #[test]
    fn times_print_as_utc() {
        assert_eq!(utc(1_796_584_186_079), "2026-12-06T19:09:46Z");
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
    }
}
