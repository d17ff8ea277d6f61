-- Names stay in the branch: the district auditor role, invitations, approvals
-- of what upper levels ask for, drill-down grants, and an append-only audit log.

-- Users: the role check gains 'district_auditor' and a user can be disabled.
-- An empty `password_hash` is an invited user who has not set one yet; it
-- matches no password. (SQLite rebuilds the table for this; PostgreSQL
-- changes the constraint in place.)
alter table users drop constraint users_role_check;
alter table users add constraint users_role_check
    check (role in ('district_admin', 'district_auditor', 'sub_district_admin', 'branch_secretary', 'volunteer'));
alter table users add column disabled_at bigint;

-- A user invited through the API sets their own password with a one-time
-- activation code (only its SHA-256 is stored). An invitation that gives
-- an upper level's invitee names (a branch secretary) waits for the branch's
-- secretary, or the operator, to approve it.
create table user_invitations (
    id text primary key,
    user_id text not null references users(id) on delete cascade,
    code_hash bytea not null unique,
    created_by text not null,
    created_at bigint not null,
    expires_at bigint not null,
    needs_approval bigint not null default 0 check (needs_approval in (0, 1)),
    approved_at bigint,
    approved_by text,
    denied_at bigint,
    denied_by text,
    presented_at bigint,
    used_at bigint
);
create index user_invitations_user on user_invitations(user_id);

-- Enrollment codes: a public id (the code itself is secret), and the approval
-- a code asked for by an upper level waits for.
alter table enrollment_codes add column id text;
update enrollment_codes set id = gen_random_uuid()::text;
create unique index enrollment_codes_id on enrollment_codes(id);
alter table enrollment_codes add column needs_approval bigint not null default 0 check (needs_approval in (0, 1));
alter table enrollment_codes add column approved_at bigint;
alter table enrollment_codes add column approved_by text;
alter table enrollment_codes add column denied_at bigint;
alter table enrollment_codes add column denied_by text;
-- When a device first presented the code while it waited for approval.
alter table enrollment_codes add column presented_at bigint;
create index enrollment_codes_branch on enrollment_codes(branch_id);
-- Codes upper-level admins issued before this migration, still unused, now
-- wait for the branch's approval like new ones.
update enrollment_codes set needs_approval = 1
    where used_at is null
      and created_by in (select username from users where role in ('district_admin', 'sub_district_admin'));

-- "Break the glass": an upper-level user's explicit, reasoned, time-limited
-- access to one branch's names, visible to that branch.
create table drilldown_grants (
    id text primary key,
    branch_id text not null references tenants(id),
    user_id text not null references users(id),
    reason text not null,
    created_at bigint not null,
    expires_at bigint not null,
    revoked_at bigint,
    revoked_by text
);
create index drilldown_grants_branch on drilldown_grants(branch_id, expires_at);
create index drilldown_grants_user on drilldown_grants(user_id, branch_id);

-- The audit log: which tenant an entry concerns (for the branch secretary and
-- the district auditor) and whether the action was done or refused.
alter table audit add column tenant_id text;
alter table audit add column tenant_path text;
alter table audit add column outcome text not null default 'ok' check (outcome in ('ok', 'refused', 'failed'));
update audit set tenant_id = subject, tenant_path = (select path from tenants t where t.id = audit.subject)
    where subject in (select id from tenants);
update audit set
    tenant_id = (select u.tenant_id from users u where u.username = audit.subject),
    tenant_path = (select t.path from users u join tenants t on t.id = u.tenant_id where u.username = audit.subject)
    where action = 'user.create' and subject in (select username from users);
update audit set
    tenant_id = (select d.branch_id from devices d where d.id = audit.subject),
    tenant_path = (select t.path from devices d join tenants t on t.id = d.branch_id where d.id = audit.subject)
    where action = 'device.revoke' and subject in (select id from devices);
create index audit_tenant on audit(tenant_path, id);

-- Append-only: no row is ever changed or removed.
create function audit_is_append_only() returns trigger language plpgsql as $$
begin
    raise exception 'the audit log is append-only';
end;
$$;
create trigger audit_no_update before update on audit
    for each row execute function audit_is_append_only();
create trigger audit_no_delete before delete on audit
    for each row execute function audit_is_append_only();
-- Row triggers do not fire on truncate.
create trigger audit_no_truncate before truncate on audit
    for each statement execute function audit_is_append_only();
