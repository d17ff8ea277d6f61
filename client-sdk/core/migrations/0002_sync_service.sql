-- Documents holding local changes the server has not acknowledged: the sync
-- service and the checkpoint load these, not the whole history. Set for
-- every existing document, so the first sync after the upgrade checks each
-- once and clears what is acknowledged.
alter table documents add column unacked integer not null default 0;
update documents set unacked = 1;

-- Heads the server's rollups count each document up to, as last heard.
alter table sync_states add column counted_heads text not null default '';
