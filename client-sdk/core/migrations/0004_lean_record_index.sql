-- The record index again, leaner: a store with a day of visits was 12.8x
-- its Automerge chunks on disk, most of it this index (ids as text, five
-- copies of each row across the table and its indexes). Now one row per
-- record in a table without rowids, ids as their 16 bytes, months and days
-- as small integers, and one partial index for open follow-ups. Its rows
-- can be rebuilt from the documents, so the logs are indexed again on
-- first use instead of converting rows here.
drop table record_index;
create table record_index (
    -- The log's month: year * 12 + month - 1.
    month integer not null,
    -- The collection's place in the monthly log's list (visits = 0).
    collection integer not null,
    -- A canonical UUID key as its 16 bytes; any other key as text.
    record_key blob not null,
    -- A valid visit's date, its member and its open follow-up's due date;
    -- dates as days since 1970-01-01.
    visit_day integer,
    member blob,
    follow_up_due integer,
    primary key (month, collection, record_key)
) without rowid;
create index record_index_due on record_index (follow_up_due) where follow_up_due is not null;
update documents set indexed = 0 where kind = 'log';
