//! Login sessions, the throttling state of logins, and disabling users.
//!
//! Throttling is kept here, in SQLite, rather than in memory: it survives a
//! restart (a lockout is not lifted by restarting the server) and holds
//! across processes. `login_attempts` has one row per attempt that was let
//! through to a password check, written *before* argon2 runs: an attempt
//! counts as a failure until it proves otherwise, so a burst of concurrent
//! attempts sees the ones still being checked, and only the free ones get
//! through. A success deletes its own row and stops the account's earlier
//! failures counting against the account (they still count against their
//! addresses). An account is never locked (see [`LoginPolicy`]); the
//! `login_lockouts` table of an older version is no longer read. Every time
//! here comes from the caller (the server's [`crate::auth::Clock`]).

use std::net::IpAddr;
use std::time::Duration;

use serde::Serialize;
use sqlx::Row;
use sqlx::any::AnyRow;

use super::audit::{AuditEntry, record};
use super::tenants::user_from_row;
use super::{Store, StoreError, serialize_display};
use crate::auth::{LoginPolicy, Refusal, Tallies, Tally};
use crate::budget::Verdict;
use crate::store::User;

/// An attempt let through to a password check; it counts as a failure until
/// [`Store::login_succeeded`] or [`Store::password_changed`] takes it back.
#[derive(Debug)]
#[must_use]
pub struct Attempt(i64);

/// A user as a login sees them.
#[derive(Debug, Clone)]
pub struct LoginAccount {
    pub user: User,
    /// Empty for an invited user who has not set a password yet.
    pub password_hash: String,
    pub disabled: bool,
}

/// A login session. Its `id` is not secret: it names the session in
/// listings and revocations; the token is stored only as its SHA-256.
#[derive(Clone, Debug, Serialize)]
pub struct Session {
    pub id: String,
    #[serde(serialize_with = "serialize_display")]
    pub user_id: uuid::Uuid,
    pub username: String,
    pub created_at: i64,
    pub last_used_at: i64,
    pub expires_at: i64,
    /// The client address it was opened from.
    pub address: Option<String>,
}

fn session_from_row(row: &AnyRow) -> Result<Session, StoreError> {
    Ok(Session {
        id: row.try_get("session_id")?,
        user_id: super::parse_column(&row.try_get::<String, _>("session_user_id")?, "user id")?,
        username: row.try_get("session_username")?,
        created_at: row.try_get("session_created_at")?,
        last_used_at: row.try_get("session_last_used_at")?,
        expires_at: row.try_get("session_expires_at")?,
        address: row.try_get("session_address")?,
    })
}

const SESSION_COLUMNS: &str = "s.id as session_id, s.user_id as session_user_id, \
     u.username as session_username, s.created_at as session_created_at, \
     s.last_used_at as session_last_used_at, s.expires_at as session_expires_at, \
     s.address as session_address";

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

/// How stale `last_used_at` may get before a request writes it: a tenth of
/// the idle timeout, at most a minute, so most requests only read.
fn touch_granularity(idle: Duration) -> i64 {
    millis(idle / 10).min(60_000)
}

use super::Tx;

/// The failures an attempt at an account from an address is judged by.
async fn tallies(
    conn: &mut sqlx::AnyConnection,
    policy: &LoginPolicy,
    now: i64,
    account: &str,
    address: &str,
) -> Result<Tallies, StoreError> {
    let cutoff = now.saturating_sub(millis(policy.failure_window));
    let tally = |row: AnyRow| -> Result<Tally, StoreError> {
        Ok(Tally {
            failures: u32::try_from(row.try_get::<i64, _>(0)?).unwrap_or(u32::MAX),
            last_at: row.try_get(1)?,
        })
    };
    let pair = tally(
        sqlx::query(
            "select count(*), coalesce(max(at), 0) from login_attempts
             where account = $1 and address = $2 and counts_for_account = 1 and at > $3",
        )
        .bind(account)
        .bind(address)
        .bind(cutoff)
        .fetch_one(&mut *conn)
        .await?,
    )?;
    let by_address = tally(
        sqlx::query(
            "select count(*), coalesce(max(at), 0) from login_attempts where address = $1 and at > $2",
        )
        .bind(address)
        .bind(cutoff)
        .fetch_one(&mut *conn)
        .await?,
    )?;
    // Counted, not `exists`: a boolean is an integer on SQLite and a
    // boolean on PostgreSQL, and a count reads the same from both.
    let known = 0 < sqlx::query_scalar::<_, i64>(
        "select count(*) from login_known_addresses
         where account = $1 and address = $2 and last_success_at > $3",
    )
    .bind(account)
    .bind(address)
    .bind(now.saturating_sub(millis(policy.known_address_for)))
    .fetch_one(&mut *conn)
    .await?;
    let account_wide = if known {
        None
    } else {
        Some(tally(
            sqlx::query(
                "select count(*), coalesce(max(at), 0) from login_attempts
                 where account = $1 and counts_for_account = 1 and at > $2",
            )
            .bind(account)
            .bind(cutoff)
            .fetch_one(&mut *conn)
            .await?,
        )?)
    };
    Ok(Tallies {
        pair,
        address: by_address,
        account_wide,
    })
}

impl Store {
    /// The user named `username` with their password hash and state.
    pub async fn login_account(&self, username: &str) -> Result<Option<LoginAccount>, StoreError> {
        let row = sqlx::query(
            "select u.*, t.path from users u join tenants t on t.id = u.tenant_id where u.username = $1",
        )
        .bind(username.trim())
        .fetch_optional(self.every_branch())
        .await?;
        row.map(|r| account_from_row(&r)).transpose()
    }

    /// The user with id `id` with their password hash and state.
    pub async fn login_account_by_id(
        &self,
        id: uuid::Uuid,
    ) -> Result<Option<LoginAccount>, StoreError> {
        let row = sqlx::query(
            "select u.*, t.path from users u join tenants t on t.id = u.tenant_id where u.id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.every_branch())
        .await?;
        row.map(|r| account_from_row(&r)).transpose()
    }

    /// Decides whether a login attempt at `now` for `account` from `address`
    /// may check a password. If so, records it (as a failure until it
    /// succeeds). A refusal writes nothing: a flood of refused attempts
    /// costs reads only.
    pub async fn begin_login_attempt(
        &self,
        policy: &LoginPolicy,
        now: i64,
        account: &str,
        address: &str,
    ) -> Result<Result<Attempt, Refusal>, StoreError> {
        let cutoff = now.saturating_sub(millis(policy.failure_window));
        {
            let mut conn = self.every_branch().acquire().await?;
            let judged = tallies(&mut conn, policy, now, account, address).await?;
            if let Err(refusal) = policy.check(now, judged) {
                return Ok(Err(refusal));
            }
        }
        // Again under the write lock: another attempt may have been let
        // through since.
        let mut tx = self.begin_write().await?;
        sqlx::query("delete from login_attempts where at <= $1")
            .bind(cutoff)
            .execute(&mut *tx)
            .await?;
        let judged = tallies(&mut tx, policy, now, account, address).await?;
        if let Err(refusal) = policy.check(now, judged) {
            tx.commit().await?;
            return Ok(Err(refusal));
        }
        let id: i64 = sqlx::query_scalar(
            "insert into login_attempts (account, address, at) values ($1, $2, $3) returning id",
        )
        .bind(account)
        .bind(address)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(Ok(Attempt(id)))
    }

    /// The password matched: the attempt and the account's failures stop
    /// counting, and a session opens, in one transaction with its audit
    /// entry.
    pub async fn login_succeeded(
        &self,
        attempt: Attempt,
        user: &User,
        token_hash: &[u8],
        ip: Option<IpAddr>,
        now: i64,
        expires_at: i64,
    ) -> Result<Session, StoreError> {
        let mut tx = self.begin_write().await?;
        forgive(&mut tx, attempt, &user.username, now).await?;
        sqlx::query("delete from user_sessions where expires_at <= $1")
            .bind(now)
            .execute(&mut *tx)
            .await?;
        let session = Session {
            id: uuid::Uuid::new_v4().to_string(),
            user_id: user.id,
            username: user.username.clone(),
            created_at: now,
            last_used_at: now,
            expires_at,
            address: ip.map(|ip| ip.to_canonical().to_string()),
        };
        sqlx::query(
            "insert into user_sessions (id, token_hash, user_id, created_at, last_used_at, expires_at, address)
             values ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&session.id)
        .bind(token_hash)
        .bind(user.id.to_string())
        .bind(now)
        .bind(now)
        .bind(expires_at)
        .bind(&session.address)
        .execute(&mut *tx)
        .await?;
        let detail = format!(
            "session {} from {}",
            session.id,
            session.address.as_deref().unwrap_or("an unknown address")
        );
        record(
            &mut tx,
            AuditEntry::by_user(user, "login", &user.username).detail(detail),
        )
        .await?;
        tx.commit().await?;
        Ok(session)
    }

    /// No password was checked after all (the password budget was full):
    /// the attempt is taken back, counting as nothing.
    pub async fn login_abandoned(&self, attempt: Attempt) -> Result<(), StoreError> {
        sqlx::query("delete from login_attempts where id = $1")
            .bind(attempt.0)
            .execute(self.every_branch())
            .await?;
        Ok(())
    }

    /// The password did not match (or the account cannot log in): the
    /// attempt stays counted, at `now`, and is audited as `verdict` says
    /// (once per account, address and interval, so a flood of failures
    /// cannot grow the append-only log without bound).
    #[allow(clippy::too_many_arguments)]
    pub async fn login_failed(
        &self,
        attempt: Attempt,
        user: Option<&User>,
        address: &str,
        now: i64,
        action: &str,
        reason: &str,
        verdict: Verdict,
    ) -> Result<(), StoreError> {
        let mut tx = self.begin_write().await?;
        sqlx::query("update login_attempts set at = $1 where id = $2")
            .bind(now)
            .bind(attempt.0)
            .execute(&mut *tx)
            .await?;
        if let Some(detail) = verdict.detail(format!("{reason}, from {address}")) {
            // Only a known account's name goes in the log: an unknown
            // "username" is often a password typed into the wrong field.
            // A known account's attempt concerns its tenant. An unknown
            // username concerns no tenant, yet guessing is what auditors
            // watch for: it goes to every district's log, where the
            // auditor sees it.
            let about = |entry: AuditEntry| match user {
                Some(u) => entry.tenant(u.tenant_id, &u.tenant_path),
                None => entry.every_district(),
            };
            let subject = user.map_or("unknown user", |u| u.username.as_str());
            let actor = user.map_or("anonymous", |u| u.username.as_str());
            record(
                &mut tx,
                about(AuditEntry::new(actor, action, subject))
                    .detail(detail)
                    .refused(),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// The current password matched: sets the new hash and ends every other
    /// session of the user. Returns how many ended.
    pub async fn password_changed(
        &self,
        attempt: Attempt,
        user: &User,
        password_hash: &str,
        keep_session: &str,
        now: i64,
    ) -> Result<u64, StoreError> {
        let mut tx = self.begin_write().await?;
        forgive(&mut tx, attempt, &user.username, now).await?;
        sqlx::query("update users set password_hash = $1 where id = $2")
            .bind(password_hash)
            .bind(user.id.to_string())
            .execute(&mut *tx)
            .await?;
        let ended = sqlx::query("delete from user_sessions where user_id = $1 and id != $2")
            .bind(user.id.to_string())
            .bind(keep_session)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        record(
            &mut tx,
            AuditEntry::by_user(user, "user.password_change", &user.username)
                .detail(format!("ended {ended} other sessions")),
        )
        .await?;
        tx.commit().await?;
        Ok(ended)
    }

    /// The session and user behind a token, if the session has neither
    /// expired nor been idle for `idle`, and the user is not disabled.
    /// Marks the session used (at most every [`touch_granularity`]).
    pub async fn session_user(
        &self,
        token_hash: &[u8],
        now: i64,
        idle: Duration,
    ) -> Result<Option<(Session, User)>, StoreError> {
        let row = sqlx::query(&format!(
            "select {SESSION_COLUMNS}, u.*, t.path
             from user_sessions s join users u on u.id = s.user_id join tenants t on t.id = u.tenant_id
             where s.token_hash = $1 and s.expires_at > $2 and s.last_used_at > $3 and u.disabled_at is null"
        ))
        .bind(token_hash)
        .bind(now)
        .bind(now.saturating_sub(millis(idle)))
        .fetch_optional(self.every_branch())
        .await?;
        let Some(row) = row else { return Ok(None) };
        let mut session = session_from_row(&row)?;
        let user = user_from_row(&row)?;
        if now - session.last_used_at >= touch_granularity(idle) {
            sqlx::query(
                "update user_sessions set last_used_at = $1 where id = $2 and last_used_at < $3",
            )
            .bind(now)
            .bind(&session.id)
            .bind(now)
            .execute(self.every_branch())
            .await?;
            session.last_used_at = now;
        }
        Ok(Some((session, user)))
    }

    /// The live sessions of `user` (or of everyone), oldest first.
    pub async fn sessions(
        &self,
        user: Option<uuid::Uuid>,
        now: i64,
        idle: Duration,
    ) -> Result<Vec<Session>, StoreError> {
        sqlx::query(&format!(
            "select {SESSION_COLUMNS}
             from user_sessions s join users u on u.id = s.user_id
             where ($1 is null or s.user_id = $2) and s.expires_at > $3 and s.last_used_at > $4
             order by s.created_at, s.id"
        ))
        .bind(user.map(|u| u.to_string()))
        .bind(user.map(|u| u.to_string()))
        .bind(now)
        .bind(now.saturating_sub(millis(idle)))
        .fetch_all(self.every_branch())
        .await?
        .iter()
        .map(session_from_row)
        .collect()
    }

    /// Ends session `id`, if it exists (and, with `owner`, belongs to that
    /// user). Returns whether it did.
    pub async fn revoke_session(
        &self,
        id: &str,
        owner: Option<uuid::Uuid>,
        by: &str,
    ) -> Result<bool, StoreError> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "select u.*, t.path from user_sessions s join users u on u.id = s.user_id
             join tenants t on t.id = u.tenant_id
             where s.id = $1 and ($2 is null or s.user_id = $3)",
        )
        .bind(id)
        .bind(owner.map(|u| u.to_string()))
        .bind(owner.map(|u| u.to_string()))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else { return Ok(false) };
        let user = user_from_row(&row)?;
        sqlx::query("delete from user_sessions where id = $1")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        record(
            &mut tx,
            AuditEntry::new(by, "session.revoke", &user.username)
                .tenant(user.tenant_id, &user.tenant_path)
                .detail(format!("session {id}")),
        )
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Ends the session of a token (logout).
    pub async fn delete_session(&self, token_hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query("delete from user_sessions where token_hash = $1")
            .bind(token_hash)
            .execute(self.every_branch())
            .await?;
        Ok(())
    }

    /// Disables (or enables again) a user. Disabling ends all their
    /// sessions in the same transaction; a disabled user's token stops
    /// working at once either way, as every request checks `disabled_at`.
    /// Returns whether anything changed and how many sessions ended.
    pub async fn set_user_disabled(
        &self,
        user: &User,
        disabled: bool,
        by: &str,
        now: i64,
    ) -> Result<(bool, u64), StoreError> {
        let mut tx = self.begin_write().await?;
        let changed = if disabled {
            sqlx::query("update users set disabled_at = $1 where id = $2 and disabled_at is null")
                .bind(now)
                .bind(user.id.to_string())
                .execute(&mut *tx)
                .await?
        } else {
            sqlx::query(
                "update users set disabled_at = null where id = $1 and disabled_at is not null",
            )
            .bind(user.id.to_string())
            .execute(&mut *tx)
            .await?
        }
        .rows_affected()
            > 0;
        let ended = if disabled {
            sqlx::query("delete from user_sessions where user_id = $1")
                .bind(user.id.to_string())
                .execute(&mut *tx)
                .await?
                .rows_affected()
        } else {
            0
        };
        if changed && disabled {
            // A grant is its holder's: it ends with their access, and does
            // not come back if they are enabled again.
            super::tenants::end_grants_of_holder(&mut tx, user, by).await?;
        }
        if changed {
            let action = if disabled {
                "user.disable"
            } else {
                "user.enable"
            };
            let mut entry = AuditEntry::new(by, action, &user.username)
                .tenant(user.tenant_id, &user.tenant_path);
            if disabled {
                entry = entry.detail(format!("ended {ended} sessions"));
            }
            record(&mut tx, entry).await?;
        }
        tx.commit().await?;
        Ok((changed, ended))
    }
}

/// An attempt that proved right stops counting, and so do the account's
/// earlier failures (against the account; their addresses keep them).
async fn forgive(tx: &mut Tx, attempt: Attempt, account: &str, now: i64) -> Result<(), StoreError> {
    // Only the failures of this account *from this address* are forgiven:
    // the owner logging in elsewhere must not reset a guesser's delays. The
    // address becomes one the owner is known to use.
    sqlx::query(
        "insert into login_known_addresses (account, address, last_success_at)
         select $1, address, $2 from login_attempts where id = $3
         on conflict (account, address) do update set last_success_at = excluded.last_success_at",
    )
    .bind(account)
    .bind(now)
    .bind(attempt.0)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "update login_attempts set counts_for_account = 0
         where account = $1 and address = (select address from login_attempts where id = $2)",
    )
    .bind(account)
    .bind(attempt.0)
    .execute(&mut **tx)
    .await?;
    sqlx::query("delete from login_attempts where id = $1")
        .bind(attempt.0)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

fn account_from_row(row: &AnyRow) -> Result<LoginAccount, StoreError> {
    Ok(LoginAccount {
        user: user_from_row(row)?,
        password_hash: row.try_get("password_hash")?,
        disabled: row.try_get::<Option<i64>, _>("disabled_at")?.is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Location;
    use crate::store::testing::test_location;
    use crate::tenancy::{Level, Role};

    async fn store_with_user(location: &Location) -> (Store, User) {
        let store = Store::open_at(location).await.expect("open");
        let district = store
            .create_tenant(None, Level::District, "d")
            .await
            .expect("district");
        let user = store
            .create_user(
                "admin",
                "not-a-real-hash",
                Role::DistrictAdmin,
                district.id,
                AuditEntry::new("test", "user.create", "admin"),
            )
            .await
            .expect("user");
        (store, user)
    }

    #[tokio::test]
    async fn concurrent_attempts_see_each_other_and_throttling_survives_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        let location = test_location(dir.path()).await;
        let (store, user) = store_with_user(&location).await;
        let policy = LoginPolicy::default();
        let now = 1_000_000_000;
        // Twenty at once from one address: each counts as a failure from
        // the moment it is let through, so only the free five get to a
        // password check.
        let attempts = futures_util::future::join_all((0..20).map(|_| {
            let (store, policy) = (store.clone(), policy.clone());
            async move {
                store
                    .begin_login_attempt(&policy, now, "admin", "10.0.0.1")
                    .await
                    .expect("attempt")
            }
        }))
        .await;
        let (admitted, refused): (Vec<_>, Vec<_>) = attempts.into_iter().partition(|a| a.is_ok());
        assert_eq!(admitted.len(), 5);
        assert!(
            refused
                .iter()
                .all(|r| matches!(r, Err(Refusal::Throttled { .. })))
        );
        for attempt in admitted {
            let attempt = attempt.expect("admitted");
            store
                .login_failed(
                    attempt,
                    Some(&user),
                    "10.0.0.1",
                    now,
                    "login",
                    "wrong password",
                    Verdict::Record { left_out: 0 },
                )
                .await
                .expect("failed");
        }
        store.close().await;

        let store = Store::open_at(&location).await.expect("reopen");
        let again = store
            .begin_login_attempt(&policy, now + 10, "admin", "10.0.0.1")
            .await
            .expect("attempt");
        assert_eq!(
            again.err(),
            Some(Refusal::Throttled {
                retry_after: Duration::from_millis(990)
            })
        );
        // The account is not locked: its owner, from another address, logs in.
        assert!(
            store
                .begin_login_attempt(&policy, now + 10, "admin", "10.9.9.9")
                .await
                .expect("attempt")
                .is_ok()
        );
        // Another account from the same address is not held back.
        assert!(
            store
                .begin_login_attempt(&policy, now + 10, "someone else", "10.0.0.1")
                .await
                .expect("attempt")
                .is_ok()
        );
    }

    #[tokio::test]
    async fn sessions_end_when_idle_expired_or_disabled() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, user) = store_with_user(&test_location(dir.path()).await).await;
        let policy = LoginPolicy::default();
        let idle = Duration::from_secs(30 * 60);
        let now = 1_000_000_000;
        let login = |token: &'static [u8], now: i64| {
            let (store, user, policy) = (store.clone(), user.clone(), policy.clone());
            async move {
                let attempt = store
                    .begin_login_attempt(&policy, now, "admin", "127.0.0.1")
                    .await
                    .expect("attempt")
                    .expect("admitted");
                store
                    .login_succeeded(attempt, &user, token, None, now, now + 12 * 3_600_000)
                    .await
                    .expect("session")
            }
        };
        let a = login(b"token a", now).await;
        let minute = 60_000;
        // Used every 29 minutes, it lives on; unused for 30, it ends.
        for step in 1..=3 {
            let at = now + step * 29 * minute;
            let (session, _) = store
                .session_user(b"token a", at, idle)
                .await
                .expect("read")
                .expect("alive");
            assert_eq!(session.id, a.id);
            assert_eq!(session.last_used_at, at);
        }
        let last = now + 3 * 29 * minute;
        assert!(
            store
                .session_user(b"token a", last + 30 * minute, idle)
                .await
                .expect("read")
                .is_none()
        );
        assert!(
            store
                .sessions(Some(user.id), last + 30 * minute, idle)
                .await
                .expect("list")
                .is_empty()
        );

        // The absolute lifetime holds however often a session is used.
        let b = login(b"token b", now).await;
        assert!(
            store
                .session_user(b"token b", b.expires_at, idle)
                .await
                .expect("read")
                .is_none()
        );

        // Disabling ends every session at once.
        let _c = login(b"token c", now).await;
        let (changed, ended) = store
            .set_user_disabled(&user, true, "test", now)
            .await
            .expect("disable");
        assert!(changed && ended >= 1);
        assert!(
            store
                .session_user(b"token c", now + 1, idle)
                .await
                .expect("read")
                .is_none()
        );
        let account = store
            .login_account("admin")
            .await
            .expect("read")
            .expect("user");
        assert!(account.disabled);
    }
}
