//! Secrets: device tokens, enrollment codes, login sessions and passwords.
//!
//! Tokens are 256 random bits shown once and stored only as SHA-256 (a
//! token is high-entropy, so a fast hash is enough and lets every request
//! look it up by index). Passwords, low-entropy, get argon2, through the
//! process's password budget ([`crate::budget::PasswordWork`]).
//!
//! Logins are throttled per (account, address) and per address
//! ([`LoginPolicy`]); an account is never locked, so nobody who knows a
//! username can shut its owner out. The throttling state lives in SQLite
//! (`login_attempts`), so it survives a restart and holds across
//! processes; every time it compares comes from the [`Clock`] in
//! [`Config`], which tests move instead of sleeping.

use std::net::IpAddr;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::Config;
use crate::store::{Session, Store, StoreError, User};

/// A secret as handed to its holder, once.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

impl Secret {
    /// A fresh 256-bit token, hex-encoded.
    pub fn generate_token() -> Self {
        let mut bytes = [0u8; 32];
        OsRng.fill_bytes(&mut bytes);
        Secret(hex::encode(bytes))
    }

    /// A one-time enrollment code a person can type: 12 characters from an
    /// alphabet without look-alikes (about 60 bits, and codes expire).
    pub fn generate_code() -> Self {
        const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZ23456789";
        let mut bytes = [0u8; 12];
        OsRng.fill_bytes(&mut bytes);
        let code: String = bytes
            .iter()
            .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
            .collect();
        Secret(format!("{}-{}-{}", &code[0..4], &code[4..8], &code[8..12]))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> Vec<u8> {
        hash_secret(&self.0)
    }
}

/// The stored form of a token or code. Codes are compared without their
/// dashes and case, as a person may type them either way.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    let normalised: String = secret
        .chars()
        .filter(|c| *c != '-' && !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    Sha256::digest(normalised.as_bytes()).to_vec()
}

/// Errors from password handling.
#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("password must be at least 8 characters")]
    TooShort,
    #[error("password hashing failed: {0}")]
    Hash(String),
    #[error(transparent)]
    Busy(#[from] crate::budget::Busy),
}

pub fn hash_password(password: &str) -> Result<String, PasswordError> {
    if password.chars().count() < 8 {
        return Err(PasswordError::TooShort);
    }
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Hash(e.to_string()))
}

pub fn verify_password(password: &str, stored: &str) -> bool {
    PasswordHash::new(stored)
        .map(|parsed| {
            Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok()
        })
        .unwrap_or(false)
}

// ---------------------------------------------------------------------------
// The clock logins and idle connections go by.

/// The time of logins, sessions, throttling and idle connections. The
/// system clock in production; tests use [`Clock::adjustable`] and
/// [`Clock::advance`] it instead of sleeping through a lockout or a
/// timeout, so what they check does not depend on how loaded the machine is.
#[derive(Clone, Debug, Default)]
pub struct Clock {
    /// How far an adjustable clock has been moved; `None` is the system
    /// clock. A watch, so a task waiting on it wakes when it moves.
    manual: Option<Arc<Manual>>,
}

#[derive(Debug)]
struct Manual {
    /// The wall time it started at, in ms since the Unix epoch.
    start_ms: i64,
    advanced: watch::Sender<Duration>,
}

/// The system clock's origin for [`Clock::monotonic`].
static STARTED: LazyLock<tokio::time::Instant> = LazyLock::new(tokio::time::Instant::now);

impl Clock {
    pub fn system() -> Self {
        Clock { manual: None }
    }

    /// A clock that starts at the system's time and then stands still
    /// until [`Clock::advance`] moves it, so a test's delays are exact.
    pub fn adjustable() -> Self {
        Clock {
            manual: Some(Arc::new(Manual {
                start_ms: crate::store::now_ms(),
                advanced: watch::Sender::new(Duration::ZERO),
            })),
        }
    }

    /// Wall time in ms since the Unix epoch: what sessions and throttling
    /// store.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            Some(manual) => manual
                .start_ms
                .saturating_add(millis(*manual.advanced.borrow())),
            None => crate::store::now_ms(),
        }
    }

    /// Monotonic time since an origin of this clock: what timeouts measure
    /// (the wall clock may step).
    pub fn monotonic(&self) -> Duration {
        match &self.manual {
            Some(manual) => *manual.advanced.borrow(),
            None => STARTED.elapsed(),
        }
    }

    /// Waits until [`Clock::monotonic`] reaches `at`.
    pub async fn sleep_until(&self, at: Duration) {
        match &self.manual {
            // Past the end of time (an idle timeout of `Duration::MAX`,
            // say) is never.
            None => match STARTED.checked_add(at) {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            },
            Some(manual) => {
                let mut moved = manual.advanced.subscribe();
                while *moved.borrow_and_update() < at {
                    // The sender lives as long as this clock does.
                    if moved.changed().await.is_err() {
                        std::future::pending::<()>().await;
                    }
                }
            }
        }
    }

    /// Moves an adjustable clock forward (every clone of it), waking what
    /// waits on it.
    ///
    /// # Panics
    /// On the system clock, which only time moves.
    pub fn advance(&self, by: Duration) {
        self.manual
            .as_ref()
            .expect("only an adjustable clock can be advanced")
            .advanced
            .send_modify(|advanced| *advanced = advanced.saturating_add(by));
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

// ---------------------------------------------------------------------------
// Throttling policy.

/// How failed logins slow further attempts down. Failures are counted per
/// account *and address* (the username as typed, whether or not it exists,
/// so throttling reveals nothing, from one client address), and per
/// address, within `failure_window`. Past the free failures each attempt
/// waits `first_delay`, doubling per further failure up to `max_delay`,
/// after the last failure. A refused attempt runs no argon2 and counts as
/// nothing.
///
/// There is no account lockout: a lock anyone who knows a username can
/// trigger shuts its owner out (a branch secretary who alone approves
/// enrollments, for 15 minutes, again and again). Guessing from one
/// address is slowed by both keys. Guessing one account from many
/// addresses is slowed account-wide past `account_wide_free_failures`,
/// except from addresses the account logged in from within
/// `known_address_for`: the owner is never held back by someone else's
/// guessing, and a guesser gets a few dozen tries per window however many
/// addresses they hold.
#[derive(Clone, Debug)]
pub struct LoginPolicy {
    pub account_free_failures: u32,
    pub address_free_failures: u32,
    pub account_wide_free_failures: u32,
    pub failure_window: Duration,
    pub first_delay: Duration,
    pub max_delay: Duration,
    pub known_address_for: Duration,
}

impl Default for LoginPolicy {
    fn default() -> Self {
        LoginPolicy {
            account_free_failures: 5,
            address_free_failures: 20,
            account_wide_free_failures: 50,
            failure_window: Duration::from_secs(15 * 60),
            first_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(5 * 60),
            known_address_for: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

/// The failures an attempt is judged by.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tallies {
    /// Of the (account, address) pair.
    pub pair: Tally,
    /// Of the address, whatever account.
    pub address: Tally,
    /// Of the account from every address; `None` when the address is one
    /// the account logged in from before (exempt).
    pub account_wide: Option<Tally>,
}

/// Failures counted for one key within the window.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    pub failures: u32,
    /// When the latest of them was (ms); meaningless when there are none.
    pub last_at: i64,
}

/// Why an attempt is refused before any password is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Too many recent failures: wait this long.
    Throttled { retry_after: Duration },
}

impl LoginPolicy {
    /// The wait after `failures` failures of which `free` cost nothing.
    pub fn delay(&self, failures: u32, free: u32) -> Option<Duration> {
        if failures < free {
            return None;
        }
        let doublings = (failures - free).min(30);
        Some(
            self.first_delay
                .saturating_mul(1u32 << doublings)
                .min(self.max_delay),
        )
    }

    /// Whether an attempt at `now` may go ahead, given its tallies.
    pub fn check(&self, now: i64, tallies: Tallies) -> Result<(), Refusal> {
        let wait = |tally: Tally, free: u32| {
            let delay = self.delay(tally.failures, free)?;
            let until = tally.last_at.saturating_add(millis(delay));
            (until > now).then(|| Duration::from_millis((until - now) as u64))
        };
        let waits = [
            wait(tallies.pair, self.account_free_failures),
            wait(tallies.address, self.address_free_failures),
            tallies
                .account_wide
                .and_then(|t| wait(t, self.account_wide_free_failures)),
        ];
        match waits.into_iter().flatten().max() {
            Some(retry_after) => Err(Refusal::Throttled { retry_after }),
            None => Ok(()),
        }
    }
}

/// What failures are counted under for an account: the username as typed
/// (trimmed, as the lookup does), bounded in length.
pub fn account_key(username: &str) -> String {
    username.trim().chars().take(100).collect()
}

/// What failures are counted under for a client: its IPv4 address, or the
/// /64 of an IPv6 one (one host usually holds a whole /64). Without a known
/// address every such client shares one key.
pub fn address_key(ip: Option<IpAddr>) -> String {
    match ip.map(|ip| ip.to_canonical()) {
        Some(IpAddr::V4(v4)) => v4.to_string(),
        Some(IpAddr::V6(v6)) => {
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
        None => "unknown".to_owned(),
    }
}

// ---------------------------------------------------------------------------
// Logging in and changing a password.

/// Why a login or a password change did not happen.
#[derive(Debug, thiserror::Error)]
pub enum LoginError {
    #[error("wrong username or password")]
    BadCredentials,
    #[error("this account is disabled")]
    Disabled,
    #[error("too many failed logins; try again in {} s", ceil_secs(*retry_after))]
    Throttled { retry_after: Duration },
    #[error("the current password is wrong")]
    WrongPassword,
    #[error(transparent)]
    Password(#[from] PasswordError),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<Refusal> for LoginError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Throttled { retry_after } => LoginError::Throttled { retry_after },
        }
    }
}

/// Whole seconds, rounded up, at least 1: a `Retry-After` value.
pub fn ceil_secs(d: Duration) -> u64 {
    d.as_millis().div_ceil(1000).max(1) as u64
}

/// A fresh login; the token is shown only here.
#[derive(Debug)]
pub struct LoggedIn {
    pub token: Secret,
    pub session: Session,
    pub user: User,
}

/// Logs `username` in from `ip`: throttling first (a refused attempt runs
/// no argon2), then the password under [`PasswordWork`], then a session.
pub async fn log_in(
    store: &Store,
    config: &Config,
    username: &str,
    password: &str,
    ip: Option<IpAddr>,
) -> Result<LoggedIn, LoginError> {
    let account = account_key(username);
    let address = address_key(ip);
    let now = config.clock.now_ms();
    let attempt = store
        .begin_login_attempt(&config.logins, now, &account, &address)
        .await??;
    let found = store.login_account(&account).await?;
    let stored = found.as_ref().map(|a| a.password_hash.clone());
    let verified = match config
        .budgets
        .passwords
        .verify(&address, password.to_owned(), stored)
        .await
    {
        Ok(verified) => verified,
        Err(busy) => {
            // Nothing was checked: the attempt must not count as a failure.
            store.login_abandoned(attempt).await?;
            return Err(PasswordError::Busy(busy).into());
        }
    };
    let now = config.clock.now_ms();
    match found {
        Some(account) if verified && !account.disabled => {
            let token = Secret::generate_token();
            let session = store
                .login_succeeded(
                    attempt,
                    &account.user,
                    &token.hash(),
                    ip,
                    now,
                    now.saturating_add(millis(config.session_ttl)),
                )
                .await?;
            Ok(LoggedIn {
                token,
                session,
                user: account.user,
            })
        }
        found => {
            // A disabled account is named only to someone who knows its
            // password; verifying it costs what any other attempt costs.
            let disabled = verified && found.as_ref().is_some_and(|a| a.disabled);
            let reason = if disabled {
                "account disabled"
            } else {
                "wrong password"
            };
            // Guesses at a real account are recorded whatever anonymous
            // floods do; unknown usernames share a per-minute cap.
            let source = format!("{account}\u{0}{address}");
            let refusals = &config.budgets.refusals;
            let verdict = if found.is_some() {
                refusals.verdict_for_known("login", &source, now)
            } else {
                refusals.verdict("login", &source, now)
            };
            store
                .login_failed(
                    attempt,
                    found.as_ref().map(|a| &a.user),
                    &address,
                    now,
                    "login",
                    reason,
                    verdict,
                )
                .await?;
            Err(if disabled {
                LoginError::Disabled
            } else {
                LoginError::BadCredentials
            })
        }
    }
}

/// Changes `user`'s password after checking the current one (throttled like
/// a login), and ends every other session of theirs. Returns how many
/// sessions ended.
pub async fn change_password(
    store: &Store,
    config: &Config,
    user: &User,
    current_session: &str,
    current: &str,
    new: &str,
    ip: Option<IpAddr>,
) -> Result<u64, LoginError> {
    if new.chars().count() < 8 {
        return Err(PasswordError::TooShort.into());
    }
    let account = account_key(&user.username);
    let address = address_key(ip);
    let attempt = store
        .begin_login_attempt(&config.logins, config.clock.now_ms(), &account, &address)
        .await??;
    let stored = store
        .login_account(&account)
        .await?
        .filter(|a| a.user.id == user.id && !a.disabled)
        .map(|a| a.password_hash);
    let verified = match config
        .budgets
        .passwords
        .verify(&address, current.to_owned(), stored)
        .await
    {
        Ok(verified) => verified,
        Err(busy) => {
            store.login_abandoned(attempt).await?;
            return Err(PasswordError::Busy(busy).into());
        }
    };
    if !verified {
        let now = config.clock.now_ms();
        let verdict = config.budgets.refusals.verdict_for_known(
            "user.password_change",
            &format!("{account}\u{0}{address}"),
            now,
        );
        store
            .login_failed(
                attempt,
                Some(user),
                &address,
                now,
                "user.password_change",
                "wrong current password",
                verdict,
            )
            .await?;
        return Err(LoginError::WrongPassword);
    }
    let hash = match config
        .budgets
        .passwords
        .hash(&address, new.to_owned())
        .await
    {
        Ok(hash) => hash,
        Err(e) => {
            // The current password was right: this attempt is no failure.
            store.login_abandoned(attempt).await?;
            return Err(e.into());
        }
    };
    Ok(store
        .password_changed(attempt, user, &hash, current_session, config.clock.now_ms())
        .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_adjustable_clock_wakes_its_sleepers_when_moved_and_not_before() {
        let clock = Clock::adjustable();
        let started = clock.now_ms();
        let sleeper = tokio::spawn({
            let clock = clock.clone();
            async move { clock.sleep_until(Duration::from_secs(90)).await }
        });
        clock.advance(Duration::from_secs(89));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(!sleeper.is_finished(), "woke a second early");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(10), sleeper)
            .await
            .expect("woke when moved")
            .expect("ran");
        assert_eq!(clock.monotonic(), Duration::from_secs(90));
        assert_eq!(clock.now_ms() - started, 90_000);
    }

    #[tokio::test]
    async fn the_system_clock_sleeps_past_the_end_of_time_without_panicking() {
        let clock = Clock::system();
        let never = clock.sleep_until(Duration::MAX);
        assert!(
            tokio::time::timeout(Duration::from_millis(20), never)
                .await
                .is_err()
        );
        let soon = clock.sleep_until(clock.monotonic() + Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(10), soon)
            .await
            .expect("a short sleep ends");
    }

    /// OWASP's password storage cheat sheet: argon2id with at least 19 MiB,
    /// 2 iterations, 1 lane. Read from a stored hash, so a change of the
    /// crate's defaults cannot weaken it unseen.
    #[test]
    fn password_hashes_meet_owasps_argon2id_minimum() {
        let stored = hash_password("a long enough password").expect("hashes");
        let parsed = PasswordHash::new(&stored).expect("a PHC string");
        assert_eq!(parsed.algorithm.as_str(), "argon2id");
        let param = |name: &str| {
            parsed
                .params
                .get_decimal(name)
                .unwrap_or_else(|| panic!("{name} in {stored}"))
        };
        assert!(param("m") >= 19 * 1024, "{stored}");
        assert!(param("t") >= 2, "{stored}");
        assert!(param("p") >= 1, "{stored}");
        assert!(verify_password("a long enough password", &stored));
        assert!(!verify_password("a long enough passworD", &stored));
    }

    #[test]
    fn tokens_are_256_bit_and_distinct() {
        let (a, b) = (Secret::generate_token(), Secret::generate_token());
        assert_eq!(a.expose().len(), 64);
        assert_ne!(a, b);
        assert_eq!(format!("{a:?}"), "Secret(<redacted>)");
    }

    #[test]
    fn codes_hash_the_same_however_typed() {
        let code = Secret::generate_code();
        let typed = code.expose().replace('-', " ").to_lowercase();
        assert_eq!(hash_secret(&typed), code.hash());
    }

    #[test]
    fn passwords_verify() {
        let stored = hash_password("correct horse").expect("hash");
        assert!(verify_password("correct horse", &stored));
        assert!(!verify_password("wrong horse!", &stored));
        assert!(matches!(
            hash_password("short"),
            Err(PasswordError::TooShort)
        ));
    }

    fn tally(failures: u32, last_at: i64) -> Tally {
        Tally { failures, last_at }
    }

    #[test]
    fn delays_double_past_the_free_failures_up_to_the_cap() {
        let policy = LoginPolicy::default();
        assert_eq!(policy.delay(4, 5), None);
        assert_eq!(policy.delay(5, 5), Some(Duration::from_secs(1)));
        assert_eq!(policy.delay(6, 5), Some(Duration::from_secs(2)));
        assert_eq!(policy.delay(9, 5), Some(Duration::from_secs(16)));
        assert_eq!(policy.delay(40, 5), Some(policy.max_delay));
        assert_eq!(policy.delay(u32::MAX, 0), Some(policy.max_delay));
    }

    fn tallies(pair: Tally, address: Tally, account_wide: Option<Tally>) -> Tallies {
        Tallies {
            pair,
            address,
            account_wide,
        }
    }

    #[test]
    fn attempts_wait_for_the_longest_delay() {
        let policy = LoginPolicy::default();
        let now = 1_000_000;
        let none = Tally::default();
        assert_eq!(
            policy.check(
                now,
                tallies(tally(4, now), tally(19, now), Some(tally(49, now)))
            ),
            Ok(())
        );
        assert_eq!(
            policy.check(now + 500, tallies(tally(5, now), none, None)),
            Err(Refusal::Throttled {
                retry_after: Duration::from_millis(500)
            })
        );
        assert_eq!(
            policy.check(now + 1000, tallies(tally(5, now), none, None)),
            Ok(())
        );
        // The address's delay is longer here, so it is the one to wait.
        assert_eq!(
            policy.check(now, tallies(tally(5, now), tally(22, now), None)),
            Err(Refusal::Throttled {
                retry_after: Duration::from_secs(4)
            })
        );
        // Guessing from many addresses slows the account down for new
        // addresses; a known address (`None`) is exempt.
        assert_eq!(
            policy.check(now, tallies(none, none, Some(tally(52, now)))),
            Err(Refusal::Throttled {
                retry_after: Duration::from_secs(4)
            })
        );
        assert_eq!(policy.check(now, tallies(none, none, None)), Ok(()));
    }

    #[test]
    fn addresses_are_keyed_by_host_and_v6_by_its_64() {
        use std::net::{Ipv4Addr, Ipv6Addr};
        assert_eq!(
            address_key(Some(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 7)))),
            "10.0.0.7"
        );
        let mapped = Ipv4Addr::new(10, 0, 0, 7).to_ipv6_mapped();
        assert_eq!(address_key(Some(IpAddr::V6(mapped))), "10.0.0.7");
        let a: Ipv6Addr = "2001:db8:1:2:aaaa::1".parse().expect("v6");
        let b: Ipv6Addr = "2001:db8:1:2:bbbb::9".parse().expect("v6");
        assert_eq!(address_key(Some(a.into())), address_key(Some(b.into())));
        assert_eq!(address_key(Some(a.into())), "2001:db8:1:2::/64");
        assert_eq!(address_key(None), "unknown");
        assert_eq!(account_key("  admin "), "admin");
        assert_eq!(account_key(&"x".repeat(500)).len(), 100);
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
        assert_eq!(ceil_secs(Duration::ZERO), 1);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        assert_eq!(ceil_secs(Duration::from_secs(900)), 900);
    }

    #[test]
    fn an_adjustable_clock_moves_and_its_clones_with_it() {
        let clock = Clock::adjustable();
        let other = clock.clone();
        let before = other.now_ms();
        assert_eq!(other.now_ms(), before, "it stands still");
        clock.advance(Duration::from_secs(3600));
        assert_eq!(other.now_ms(), before + 3_600_000);
        assert!(Clock::system().now_ms() >= before);
    }
}
