-- The machine table searches hostnames by substring: a trigram index keeps that fast at
-- 10,000 machines and beyond (pg_trgm is a trusted extension shipped with PostgreSQL).
create extension if not exists pg_trgm;
create index machines_hostname_trgm on machines using gin (hostname gin_trgm_ops);
-- The table's default order.
create index machines_hostname_idx on machines (hostname, id);
