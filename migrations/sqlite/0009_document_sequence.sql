-- Each commit that stores changes of a document numbers it, so that a
-- server node can read exactly the changes other nodes stored after the
-- ones it holds: `seq` is the document's last number, `doc_seq` the number
-- of the commit that stored a chunk (a compaction's snapshot takes the
-- number current when it was written), `projected_seq` the number the
-- document's projection rows reflect (behind `seq`: the figures lag).
alter table documents add column seq integer not null default 0;
alter table documents add column projected_seq integer not null default 0;
alter table chunks add column doc_seq integer not null default 0;
create index chunks_document_seq on chunks(document_id, doc_seq);
