-- Logins: sessions with a public id, last use and client address (listed
-- and revoked by their owner, ended after idling), and the throttling state
-- of logins, kept here so it survives a restart and holds across processes.

-- Sessions are rebuilt rather than altered: a session needs a non-secret id
-- and a last-use time that old rows cannot be given meaningfully. Everyone
-- logs in again once after this migration.
drop table user_sessions;
create table user_sessions (
    -- Not secret: names the session in listings and revocations.
    id text primary key,
    -- Only the SHA-256 of the token is stored.
    token_hash blob not null unique,
    user_id text not null references users(id) on delete cascade,
    created_at integer not null,
    -- A session unused for the idle timeout no longer works.
    last_used_at integer not null,
    expires_at integer not null,
    -- The client address it was opened from.
    address text
);
create index user_sessions_user on user_sessions(user_id);
create index user_sessions_expiry on user_sessions(expires_at);

-- One row per login attempt let through to a password check, written before
-- the check: it counts as a failure until it proves right (then it is
-- deleted). `account` is the username as typed, whether or not it exists.
-- A success stops the account's earlier failures counting against the
-- account (`counts_for_account = 0`); they still count against their address.
-- Rows older than the failure window are deleted.
create table login_attempts (
    id integer primary key autoincrement,
    account text not null,
    address text not null,
    at integer not null,
    counts_for_account integer not null default 1 check (counts_for_account in (0, 1))
);
create index login_attempts_account on login_attempts(account, at);
create index login_attempts_address on login_attempts(address, at);
create index login_attempts_at on login_attempts(at);

-- Accounts locked after too many failures: until `locked_until`, even the
-- right password is refused.
create table login_lockouts (
    account text primary key,
    locked_at integer not null,
    locked_until integer not null
);
