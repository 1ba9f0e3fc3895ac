-- Hardware health as the BMC reports it, and where plinth has read its event log up to
-- (issue 20). The power sync reads both on a slower cadence than power (next_health_at).
alter table bmcs
    add column health text check (health in ('unknown', 'ok', 'warning', 'critical')),
    -- the components that are not OK: [{kind, name, status, reason}], worst first
    add column health_components jsonb check (jsonb_typeof(health_components) = 'array'),
    add column health_checked_at timestamptz,
    add column next_health_at timestamptz not null default now(),
    -- the driver's cursor (opaque to plinth); null: the log has not been read yet
    add column log_cursor text check (length(log_cursor) <= 262144),
    add column log_checked_at timestamptz;

-- Allocation and the machine list filter on health; most machines are ok.
create index bmcs_unhealthy on bmcs (machine_id) where health in ('warning', 'critical');
