//! The `doorstep` command line: `serve`, and operator commands that work on
//! the database directly (the operator on the server's machine is trusted
//! with all of it; remote administrators use the JSON API instead).

use std::io::BufRead;
use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use doorstep_protocol::{DeviceId, TenantId};
use serde::Serialize;

use crate::admin;
use crate::authority::{Action, escape_for_terminal};
use crate::config::{Config, SyncLimits};
use crate::store::Store;
use crate::tenancy::{Level, Role, TenantPath};

/// Doorstep: offline-first field data sync for a district's branches.
#[derive(Debug, Parser)]
#[command(name = "doorstep", version)]
pub struct Cli {
    /// Where the embedded database lives.
    #[arg(
        long,
        env = "DOORSTEP_DATA_DIR",
        default_value = "./doorstep-data",
        global = true
    )]
    pub data_dir: PathBuf,
    /// Print results as JSON.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync server.
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
    /// Fill a demo district modeled on the Yanshan report through simulated
    /// phones (runs `doorstep-demo`, built from client-sdk/demo).
    Demo {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "DOORSTEP_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// PEM certificate chain; with --tls-key, serve HTTPS and WSS.
    #[arg(long, env = "DOORSTEP_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key.
    #[arg(long, env = "DOORSTEP_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Largest WebSocket message accepted, in bytes.
    #[arg(long, env = "DOORSTEP_MAX_MESSAGE_BYTES", default_value_t = SyncLimits::default().max_message_bytes)]
    pub max_message_bytes: usize,
    /// Largest total of decompressed change bytes in one sync message
    /// (measured with a capped inflater before Automerge decodes anything).
    #[arg(long, env = "DOORSTEP_MAX_SYNC_CHANGE_BYTES", default_value_t = SyncLimits::default().document.admission.max_inflated_bytes)]
    pub max_sync_change_bytes: u64,
    /// Most operations one sync message may carry.
    #[arg(long, env = "DOORSTEP_MAX_SYNC_OPS", default_value_t = SyncLimits::default().document.admission.max_ops)]
    pub max_sync_ops: u64,
    /// Largest stored size of one document, in bytes; past it changes are refused.
    #[arg(long, env = "DOORSTEP_MAX_DOCUMENT_BYTES", default_value_t = SyncLimits::default().document.max_document_bytes)]
    pub max_document_bytes: u64,
    /// Sustained messages per second one device may send.
    #[arg(long, env = "DOORSTEP_MESSAGES_PER_SECOND", default_value_t = crate::budget::BudgetLimits::default().messages_per_second)]
    pub messages_per_second: u32,
    /// Messages one device may send in a burst.
    #[arg(long, env = "DOORSTEP_MESSAGE_BURST", default_value_t = crate::budget::BudgetLimits::default().message_burst)]
    pub message_burst: u32,
}

#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a district, a sub-district under a district, or a branch under a sub-district.
    Create {
        #[arg(long, value_enum)]
        level: Level,
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
    /// Create a user. The password comes from DOORSTEP_PASSWORD or standard input.
    Create {
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        tenant: TenantId,
    },
    /// Invite a user: prints a one-time activation code with which they set
    /// their own password (POST /api/v1/activate).
    Invite {
        #[arg(long)]
        username: String,
        #[arg(long, value_enum)]
        role: Role,
        #[arg(long)]
        tenant: TenantId,
        #[arg(long, default_value_t = 72)]
        ttl_hours: u32,
    },
    /// Invitations waiting for approval (with --all, every invitation).
    Invitations {
        #[arg(long)]
        all: bool,
    },
    /// Approve an invitation an upper level made for a branch secretary
    /// (for a branch that has no secretary to approve it).
    Approve { id: uuid::Uuid },
    /// Deny such an invitation.
    Deny { id: uuid::Uuid },
    /// List every user.
    List,
    /// Disable a user: no more logins, and their sessions end at once.
    Disable {
        #[arg(long)]
        username: String,
    },
    /// Let a disabled user log in again.
    Enable {
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
    Revoke { id: String },
}

#[derive(Debug, Subcommand)]
pub enum EnrollCodeCommand {
    /// Issue a code; the device exchanges it at POST /api/v1/enroll.
    Create {
        #[arg(long)]
        branch: TenantId,
        /// What the device is, e.g. "Li Na's phone".
        #[arg(long)]
        label: String,
        #[arg(long, default_value_t = 72)]
        ttl_hours: u32,
    },
    /// Codes upper levels asked for that wait for the branch's approval
    /// (with --all, every code).
    Requests {
        #[arg(long)]
        all: bool,
    },
    /// Approve a requested code (for a branch that has no secretary to approve it).
    Approve { id: uuid::Uuid },
    /// Deny a requested code.
    Deny { id: uuid::Uuid },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Entries, newest first.
    List {
        /// Only entries about this tenant and the tenants below it.
        #[arg(long)]
        branch: Option<TenantId>,
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
    Revoke { id: DeviceId },
    /// The documents a device should sync.
    Documents { id: DeviceId },
}

impl Cli {
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("doorstep.db")
    }

    pub fn server_config(&self, args: &ServeArgs) -> Config {
        let mut config = Config::new(self.database_path());
        config.tls_cert = args.tls_cert.clone();
        config.tls_key = args.tls_key.clone();
        let defaults = SyncLimits::default();
        let mut document = defaults.document;
        document.admission.max_inflated_bytes = args.max_sync_change_bytes;
        document.admission.max_ops = args.max_sync_ops;
        document.max_document_bytes = args.max_document_bytes;
        config.limits = SyncLimits {
            max_message_bytes: args.max_message_bytes,
            document,
        };
        config.budgets = crate::budget::Budgets::new(crate::budget::BudgetLimits {
            messages_per_second: args.messages_per_second,
            message_burst: args.message_burst,
            ..Default::default()
        });
        config
    }
}

/// Parses the command line and runs it: the whole of the `doorstep` binary.
pub async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    if let Command::Demo { args } = &cli.command {
        return run_demo(&cli, args);
    }
    let store = Store::open(&cli.database_path()).await?;
    match &cli.command {
        Command::Serve(args) => {
            let config = cli.server_config(args);
            let listener = tokio::net::TcpListener::bind(args.listen).await?;
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

fn read_password() -> anyhow::Result<String> {
    if let Ok(password) = std::env::var("DOORSTEP_PASSWORD") {
        return Ok(password);
    }
    eprintln!("password (one line on standard input):");
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    Ok(line.trim_end_matches(['\r', '\n']).to_owned())
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
                            "{} {} from {} last used {}",
                            s.id,
                            escape_for_terminal(&s.username),
                            s.address.as_deref().unwrap_or("?"),
                            s.last_used_at
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
                        format!(
                            "{} {} {} {}",
                            d.id,
                            d.branch_id,
                            state,
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
                .fetch_all(self.pool())
                .await?;
        paths
            .iter()
            .map(|p| p.parse().map_err(crate::store::StoreError::Corrupt))
            .collect()
    }
}
