-- Row-level security is PostgreSQL's (migrations/postgres has this step):
-- an SQLite database is one file served by one process, with no roles.
-- The number is kept so both backends share one sequence of steps.
select 1;
