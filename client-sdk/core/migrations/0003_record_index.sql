-- Where each monthly log's records are, and each valid visit's date, member
-- and open follow-up: reads that span months (follow-ups due, a member's
-- history, finding a record to correct) and today's visits look here and
-- read only the records named, instead of loading every month or every
-- visit of one. Rewritten in the same transaction as the changes it reflects.
create table record_index (
    document_id text not null references documents(id),
    collection text not null,
    record_key text not null,
    visit_date text,
    member_id text,
    follow_up_due text,
    primary key (document_id, collection, record_key)
);
create index record_index_key on record_index (record_key);
create index record_index_date on record_index (visit_date) where visit_date is not null;
create index record_index_member on record_index (member_id) where member_id is not null;
create index record_index_due on record_index (follow_up_due) where follow_up_due is not null;

-- Logs stored before the index are indexed once, on first use; the roster
-- has no log records.
alter table documents add column indexed integer not null default 0;
update documents set indexed = 1 where kind = 'roster';
