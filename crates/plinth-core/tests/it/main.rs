//! plinth-core's integration tests: the application against a real PostgreSQL (plinth-testkit's
//! TestDb), with in-memory BMCs where a BMC is needed.

mod console;
mod credentials;
mod deploy;
mod dhcp;
mod firmware;
mod inventory;
mod jobs;
mod lifecycle;
mod scan;
mod users;
