-- Projections: relational copies of the records in branch documents, kept
-- current on every merge and keyed by record id, so a replayed sync upserts
-- the same rows and a deleted record's row goes away. Rollups are SQL over
-- these and the tenant tree; nothing here is the source of truth.

create table member_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    name text not null,
    household text not null,
    in_post bigint not null,
    no_post bigint not null,
    hardship bigint not null,
    migrant bigint not null,
    retired bigint not null,
    primary key (branch_id, record_id)
);
create index member_rows_branch on member_rows(branch_id);

create table hardship_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    member_id text not null,
    kind text not null,
    opened_on text not null,
    status text not null,
    closed_on text,
    primary key (branch_id, record_id)
);
create index hardship_rows_branch on hardship_rows(branch_id, opened_on);

create table visit_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    member_id text not null,
    kind text not null,
    aid_cash_fen bigint not null,
    aid_goods_fen bigint not null,
    follow_up_due text,
    follow_up_done bigint not null,
    primary key (branch_id, record_id)
);
create index visit_rows_branch_date on visit_rows(branch_id, date);

create table activity_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    team_id text,
    minutes bigint not null,
    primary key (branch_id, record_id)
);
create index activity_rows_branch_date on activity_rows(branch_id, date);

create table training_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    level text not null,
    attendance bigint not null,
    primary key (branch_id, record_id)
);
create index training_rows_branch_date on training_rows(branch_id, date);

create table placement_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    member_id text not null,
    primary key (branch_id, record_id)
);
create index placement_rows_branch_date on placement_rows(branch_id, date);

create table fund_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    date text not null,
    direction text not null,
    amount_fen bigint not null,
    primary key (branch_id, record_id)
);
create index fund_rows_branch_date on fund_rows(branch_id, date);

create table team_rows (
    record_id text not null,
    branch_id text not null references tenants(id),
    category text not null,
    primary key (branch_id, record_id)
);
create index team_rows_branch on team_rows(branch_id);

-- One row per person in a team (a member, or a resident who is not one).
-- Rows are keyed by (branch, record id): record ids come from devices, and
-- one branch's ids can never disturb another's rows.
create table team_people_rows (
    team_id text not null,
    person_id text not null,
    branch_id text not null,
    member_id text,
    backbone bigint not null,
    primary key (branch_id, team_id, person_id)
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

-- Fields with concurrent values, per record.
create table conflict_rows (
    document_id text not null,
    collection text not null,
    record_key text not null,
    field text not null,
    branch_id text not null,
    primary key (document_id, collection, record_key, field)
);
