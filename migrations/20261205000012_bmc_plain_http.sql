-- A Redfish BMC reached over plain http:// (issue 17): only with this opt-in per BMC, since its
-- password crosses the network in clear. BMCs enrolled before with an http:// address keep
-- working: they are opted in, and the machine page says so.
alter table bmcs add column plain_http boolean not null default false;
update bmcs set plain_http = true where protocol = 'redfish' and address like 'http://%';
