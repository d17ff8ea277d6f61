-- Where each monthly log's records are, and each valid visit's member and
-- open follow-up: reads that span months (follow-ups due, a member's
-- history, finding a record to correct) look here instead of loading every
-- month. Rewritten in the same transaction as the changes it reflects.
create table record_index (
    document_id text not null references documents(id),
    collection text not null,
    record_key text not null,
    member_id text,
    follow_up_due text,
    primary key (document_id, collection, record_key)
);
create index record_index_key on record_index (record_key);
create index record_index_member on record_index (member_id) where member_id is not null;
create index record_index_due on record_index (follow_up_due) where follow_up_due is not null;

-- Logs stored before the index are indexed once, on first use; the roster
-- has no log records.
alter table documents add column indexed integer not null default 0;
update documents set indexed = 1 where kind = 'roster';
