-- What plinth last saw of a machine (issue 22): when a lease was last bound or renewed.
-- Every path of the lease functions that binds or renews sets `expires_at` on a bound lease;
-- a trigger catches them all, and the free steps leave `bound_at` as it was. A statement that
-- sets `bound_at` itself (the batch's bind, many rows at once) spares the trigger's call per row.

create or replace function leases_set_bound_at() returns trigger language plpgsql as $$
begin
    new.bound_at := now();
    return new;
end
$$;

create or replace trigger leases_bound_on_insert
    before insert on leases
    for each row when (new.state = 'bound')
    execute function leases_set_bound_at();

create or replace trigger leases_bound_on_update
    before update on leases
    for each row when (new.state = 'bound'
                       and (old.state is distinct from 'bound'
                            or new.expires_at is distinct from old.expires_at)
                       and new.bound_at is not distinct from old.bound_at)
    execute function leases_set_bound_at();
