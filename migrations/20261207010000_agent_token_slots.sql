-- Agent tokens kept as one row per machine and mode, replaced in place (issue 24).
--
-- Every iPXE script request of a machine that boots the ramdisk minted a token: a row inserted
-- (three indexes, a foreign key, a deferred exclusion check) and the row before revoked (a
-- second row version, since `revoked_at` was in the live-token index's predicate). That was
-- the script endpoint's largest cost in PostgreSQL (42 us a token, docs/benchmarks.md), and the
-- table grew by a row per request until the purge pass. Now a machine has one row per mode:
-- a new token overwrites the row (a HOT update, since no index covers the secret's hash), and
-- the token it replaced is kept beside it (`prev_*`), so that the agent of a duplicate boot,
-- or whoever holds that token, is still told why it is refused. Tokens are found by the
-- machine and mode an agent's call names, never by their hash alone.

-- A virtual-media boot names its token by hash; once a day old, the rows whose token is gone
-- (replaced or purged) go with the purge pass (plinth_db::boot::purge_agent_tokens).
alter table vmedia_boots drop constraint vmedia_boots_token_sha256_fkey;

-- The newest token of each machine and mode stays; the others (replaced, used, expired) go.
delete from agent_tokens t
where exists (
    select 1 from agent_tokens n
    where n.machine_id = t.machine_id and n.mode = t.mode
      and (n.created_at, n.secret_sha256) > (t.created_at, t.secret_sha256)
);

alter table agent_tokens drop constraint agent_tokens_one_live;
alter table agent_tokens drop constraint agent_tokens_pkey;
drop index agent_tokens_machine_idx;
alter table agent_tokens add primary key (machine_id, mode);

-- The token this row's token replaced, as it was then: its agent is told "replaced by a newer
-- token" (or why it had ended before).
alter table agent_tokens
    add column prev_sha256 bytea check (prev_sha256 is null or length(prev_sha256) = 32),
    add column prev_expires_at timestamptz,
    add column prev_used_at timestamptz,
    add column prev_revoked_at timestamptz,
    add column prev_revoked_reason text check (length(prev_revoked_reason) <= 200);

-- Room on each page for the in-place updates (HOT) of the rows on it.
alter table agent_tokens set (fillfactor = 50);
