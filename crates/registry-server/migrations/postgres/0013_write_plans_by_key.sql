-- The group functions join their keys to `instances`. A plpgsql function plans each of its
-- statements once per connection and may keep that plan for the connection's life. A
-- connection that first ran them while the table was small (a new database, the first
-- registrations) could keep a plan that reads the whole table and hashes it, cheapest
-- at a few hundred rows, and go on reading the whole table for every group as it grew:
-- 10 ms a group at 100,000 instances instead of 1, until autovacuum's next ANALYZE
-- replaced the plan (docs/performance.md, "Changes made for speed"). These settings,
-- which hold only while the functions run, leave the planner one choice at any size:
-- each key looked up by the primary key.
ALTER FUNCTION registry_write_group
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
ALTER FUNCTION registry_lock_instances
    SET enable_seqscan = off SET enable_hashjoin = off SET enable_mergejoin = off;
