-- The device's local store. Append-only like the server's migrations.

-- Credentials and identity: device id, token, branch, actor, storage id.
create table meta (
    key text primary key,
    value text not null
);

create table documents (
    id text primary key,
    kind text not null check (kind in ('roster', 'log')),
    month text
);

-- Every change made or received, keyed by hash, plus compacted snapshots.
create table chunks (
    document_id text not null references documents(id),
    kind text not null check (kind in ('snapshot', 'incremental')),
    hash text not null,
    bytes blob not null,
    primary key (document_id, hash)
);

-- Sync state with the server, and the heads the server is known to have:
-- local changes outside those heads are not yet acknowledged.
create table sync_states (
    document_id text primary key references documents(id),
    state blob,
    acked_heads text not null default ''
);
