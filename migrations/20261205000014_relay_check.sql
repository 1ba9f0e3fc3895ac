-- A relayed DHCP packet is served only when its giaddr is one of a subnet's relay_addresses,
-- or lies inside the CIDR of a subnet that allows any relay there (issue 17): anyone on a
-- segment can forge a giaddr. Subnets made before this kept working with relays inside their
-- CIDR, so they keep that permission; new subnets do not have it unless asked.
alter table subnets add column relay_any_in_cidr boolean not null default false;
update subnets set relay_any_in_cidr = true;
