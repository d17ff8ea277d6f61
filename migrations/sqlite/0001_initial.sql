-- Doorstep schema. Append-only: later changes go in new numbered files.

-- One row: facts about this installation (its storage id for automerge-repo peers).
create table server_meta (
    key text primary key,
    value text not null
);

-- District > sub-district > branch. `path` is the materialized path of ids,
-- '/<district>/<sub-district>/<branch>'; scope checks compare whole segments.
create table tenants (
    id text primary key,
    parent_id text references tenants(id),
    level text not null check (level in ('district', 'sub_district', 'branch')),
    name text not null,
    path text not null unique,
    created_at integer not null
);

create table users (
    id text primary key,
    username text not null unique,
    password_hash text not null,
    role text not null check (role in ('district_admin', 'sub_district_admin', 'branch_secretary', 'volunteer')),
    tenant_id text not null references tenants(id),
    created_at integer not null
);

-- Login sessions for the JSON API; only the SHA-256 of the token is stored.
create table user_sessions (
    token_hash blob primary key,
    user_id text not null references users(id) on delete cascade,
    created_at integer not null,
    expires_at integer not null
);
create index user_sessions_expiry on user_sessions(expires_at);

create table devices (
    id text primary key,
    branch_id text not null references tenants(id),
    label text not null,
    created_at integer not null,
    revoked_at integer,
    last_seen_at integer
);
create index devices_branch on devices(branch_id);
create index devices_revoked on devices(revoked_at);

-- One-time codes a device exchanges for its token.
create table enrollment_codes (
    code_hash blob primary key,
    branch_id text not null references tenants(id),
    label text not null,
    created_by text not null,
    created_at integer not null,
    expires_at integer not null,
    used_at integer,
    device_id text references devices(id) deferrable initially deferred
);

-- Long-lived device tokens (256-bit random); only the SHA-256 is stored.
create table device_tokens (
    token_hash blob primary key,
    device_id text not null references devices(id) on delete cascade,
    created_at integer not null
);
create index device_tokens_device on device_tokens(device_id);

-- Automerge actor ids a device may author changes with.
create table device_actors (
    actor_id text primary key,
    device_id text not null references devices(id) on delete cascade,
    registered_at integer not null
);
create index device_actors_device on device_actors(device_id);

create table documents (
    id text primary key,
    branch_id text not null references tenants(id),
    kind text not null check (kind in ('roster', 'log')),
    month text,
    created_at integer not null
);
create index documents_branch on documents(branch_id);

-- Document storage: at most a few snapshots plus incremental changes keyed
-- by change hash (so storing a change twice is a no-op).
create table chunks (
    document_id text not null references documents(id),
    kind text not null check (kind in ('snapshot', 'incremental')),
    hash text not null,
    bytes blob not null,
    created_at integer not null,
    primary key (document_id, hash)
);

-- Which device sent which change: the audit trail of authorship.
create table change_log (
    document_id text not null,
    hash text not null,
    actor_id text not null,
    device_id text,
    received_at integer not null,
    primary key (document_id, hash)
);

-- Per-peer sync state, keyed by the peer's automerge-repo storage id.
create table sync_states (
    document_id text not null references documents(id),
    storage_id text not null,
    state blob not null,
    updated_at integer not null,
    primary key (document_id, storage_id)
);

create table audit (
    id integer primary key autoincrement,
    at integer not null,
    actor text not null,
    action text not null,
    subject text not null,
    detail text
);
