-- What plinth last saw of a machine (issue 22): the last file each client fetched, per
-- protocol. The TFTP and HTTP servers keep it in memory (plinth-core's `sightings`: no write
-- per request) and each instance writes what changed every few seconds in one upsert. Keyed
-- by the client's address, one row per address and protocol, so the table is as large as the
-- address space plinth hands out. `mac`: who held that address (its lease, or an active NIC's
-- static address) when the row was written; rows of addresses nobody holds are not written.
create table file_fetches (
    address inet not null check (family(address) = 4 and masklen(address) = 32),
    protocol text not null check (protocol in ('tftp', 'http')),
    mac macaddr not null,
    path text not null check (length(path) <= 512),
    bytes_sent bigint not null check (bytes_sent >= 0),
    size bigint not null check (size >= 0),
    complete boolean not null,
    at timestamptz not null,
    primary key (address, protocol)
);

create index file_fetches_mac_idx on file_fetches (mac);

-- When a lease was last bound or renewed; kept when it is freed (expired or released), so that a
-- machine whose lease lapsed is told apart from one that never asked. Set by the triggers of
-- crates/plinth-db/sql/sightings.sql.
alter table leases add column bound_at timestamptz;
