-- Projection rows keyed by the document they come from.
--
-- Rows were keyed by (branch, record id), so one record id in two monthly
-- logs of a branch had one row: the second overwrote the first, and deleting
-- either deleted both. Every row is now keyed by (document, record id); the
-- branch stays a column, because rollups select by branch and date.
--
-- Projections are derived from the documents, so the tables are dropped
-- and created anew, empty (as on SQLite, which cannot change a primary
-- key). Both new `documents` columns start NULL, which tells the hub that
-- no row reflects the document: it projects every document again at start.

-- The heads of the stored document (sorted hex, comma-joined), and the heads
-- its projection rows reflect.
alter table documents add column heads text;
alter table documents add column projected_heads text;

drop table member_rows;
drop table hardship_rows;
drop table visit_rows;
drop table activity_rows;
drop table training_rows;
drop table placement_rows;
drop table fund_rows;
drop table team_rows;
drop table team_people_rows;
drop table invalid_rows;
drop table conflict_rows;

create table member_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    name text not null,
    household text not null,
    in_post bigint not null,
    no_post bigint not null,
    hardship bigint not null,
    migrant bigint not null,
    retired bigint not null,
    primary key (document_id, record_id)
);
-- Visits find their member's household by (branch, member id).
create index member_rows_branch on member_rows(branch_id, record_id);

create table hardship_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    member_id text not null,
    kind text not null,
    opened_on text not null,
    status text not null,
    closed_on text,
    primary key (document_id, record_id)
);
create index hardship_rows_branch on hardship_rows(branch_id, opened_on);

create table visit_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    member_id text not null,
    kind text not null,
    aid_cash_fen bigint not null,
    aid_goods_fen bigint not null,
    follow_up_due text,
    follow_up_done bigint not null,
    primary key (document_id, record_id)
);
create index visit_rows_branch_date on visit_rows(branch_id, date);
-- Whether a member was visited in a period (hardship and migrant figures).
create index visit_rows_branch_member on visit_rows(branch_id, member_id, date);

create table activity_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    team_id text,
    minutes bigint not null,
    primary key (document_id, record_id)
);
create index activity_rows_branch_date on activity_rows(branch_id, date);

create table training_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    level text not null,
    attendance bigint not null,
    primary key (document_id, record_id)
);
create index training_rows_branch_date on training_rows(branch_id, date);

create table placement_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    member_id text not null,
    primary key (document_id, record_id)
);
create index placement_rows_branch_date on placement_rows(branch_id, date);

create table fund_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    direction text not null,
    amount_fen bigint not null,
    primary key (document_id, record_id)
);
create index fund_rows_branch_date on fund_rows(branch_id, date);

create table team_rows (
    document_id text not null,
    record_id text not null,
    branch_id text not null references tenants(id),
    category text not null,
    primary key (document_id, record_id)
);
create index team_rows_branch on team_rows(branch_id);

-- One row per person in a team (a member, or a resident who is not one),
-- keyed like its team's row.
create table team_people_rows (
    document_id text not null,
    team_id text not null,
    person_id text not null,
    branch_id text not null references tenants(id),
    member_id text,
    backbone bigint not null,
    primary key (document_id, team_id, person_id)
);

-- Records that fail validation: kept out of the figures, listed for the
-- branch secretary.
create table invalid_rows (
    document_id text not null,
    collection text not null,
    record_key text not null,
    branch_id text not null,
    problems text not null,
    primary key (document_id, collection, record_key)
);
create index invalid_rows_branch on invalid_rows(branch_id);

-- Fields with concurrent values, per record.
create table conflict_rows (
    document_id text not null,
    collection text not null,
    record_key text not null,
    field text not null,
    branch_id text not null,
    primary key (document_id, collection, record_key, field)
);
create index conflict_rows_branch on conflict_rows(branch_id);
