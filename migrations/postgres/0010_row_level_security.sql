-- Defense in depth: rows of a branch's people and documents are visible
-- only within a scope, set per transaction in `doorstep.scope`:
--   ''  (unset)   nothing at all
--   '*'           everything (the server's own work: syncing every branch)
--   '/d/s/b'      the rows of the branches at or under that tenant path
-- The nodes should connect as a role that owns nothing (README): such a
-- role is held to this, and a query of it that forgets its scope sees
-- nothing. The tables' owner is not (it is not forced): migrations,
-- pg_dump and pg_restore run as the owner and see every row.

create function doorstep_scope_admits(branch text) returns boolean
    language sql stable
    set search_path = pg_catalog, public
as $$
    select case coalesce(current_setting('doorstep.scope', true), '')
        when '' then false
        when '*' then true
        else exists (
            select 1 from tenants t
            where t.id = branch
              and (t.path = current_setting('doorstep.scope', true)
                   or starts_with(t.path, current_setting('doorstep.scope', true) || '/'))
        )
    end
$$;

create function doorstep_scope_admits_document(document text) returns boolean
    language sql stable
    set search_path = pg_catalog, public
as $$
    select case coalesce(current_setting('doorstep.scope', true), '')
        when '' then false
        when '*' then true
        else exists (
            select 1 from documents d where d.id = document and doorstep_scope_admits(d.branch_id)
        )
    end
$$;

do $$
declare
    t text;
begin
    foreach t in array array['member_rows', 'hardship_rows', 'visit_rows', 'activity_rows',
        'training_rows', 'placement_rows', 'fund_rows', 'team_rows', 'team_people_rows',
        'invalid_rows', 'conflict_rows', 'documents', 'devices']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits(branch_id))'
            || ' with check (doorstep_scope_admits(branch_id))', t);
    end loop;
    foreach t in array array['chunks', 'change_log', 'sync_states']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits_document(document_id))'
            || ' with check (doorstep_scope_admits_document(document_id))', t);
    end loop;
end
$$;
