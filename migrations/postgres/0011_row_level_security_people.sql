-- Row-level security (see 0010) on the remaining tables of people, and of
-- what grants or proves access:
--   * a unit's users, their invitations and sessions, its enrollment codes
--     and drill-down grants, and its audit entries are visible within a
--     scope that holds the unit;
--   * device tokens and actors, and the login throttle's records, are the
--     server's own business and visible only in scope '*'.
-- Nothing here changes what the server reads: its own work runs in '*',
-- and its reads on an official's behalf already ask for the official's
-- unit alone. It makes a read that forgets to ask read nothing.

create function doorstep_scope_is_everything() returns boolean
    language sql stable
    set search_path = pg_catalog, public
as $$
    select coalesce(current_setting('doorstep.scope', true), '') = '*'
$$;

create function doorstep_scope_admits_path(path text) returns boolean
    language sql stable
    set search_path = pg_catalog, public
as $$
    select case coalesce(current_setting('doorstep.scope', true), '')
        when '' then false
        when '*' then true
        else path is not null
             and (path = current_setting('doorstep.scope', true)
                  or starts_with(path, current_setting('doorstep.scope', true) || '/'))
    end
$$;

create function doorstep_scope_admits_user(account text) returns boolean
    language sql stable
    set search_path = pg_catalog, public
as $$
    select case coalesce(current_setting('doorstep.scope', true), '')
        when '' then false
        when '*' then true
        else exists (select 1 from users u where u.id = account and doorstep_scope_admits(u.tenant_id))
    end
$$;

do $$
declare
    t text;
begin
    foreach t in array array['users']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits(tenant_id))'
            || ' with check (doorstep_scope_admits(tenant_id))', t);
    end loop;
    foreach t in array array['enrollment_codes', 'drilldown_grants']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits(branch_id))'
            || ' with check (doorstep_scope_admits(branch_id))', t);
    end loop;
    foreach t in array array['user_invitations', 'user_sessions']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits_user(user_id))'
            || ' with check (doorstep_scope_admits_user(user_id))', t);
    end loop;
    foreach t in array array['audit']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy within_scope on %I using (doorstep_scope_admits_path(tenant_path))'
            || ' with check (doorstep_scope_admits_path(tenant_path))', t);
    end loop;
    foreach t in array array['device_tokens', 'device_actors', 'login_attempts', 'login_lockouts',
        'login_known_addresses']
    loop
        execute format('alter table %I enable row level security', t);
        execute format('create policy the_servers_own on %I using (doorstep_scope_is_everything())'
            || ' with check (doorstep_scope_is_everything())', t);
    end loop;
end
$$;
