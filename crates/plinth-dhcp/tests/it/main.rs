//! plinth-dhcp's integration tests: the wire layer on bytes, captured packets of real clients, and
//! property tests. `common` holds what they share.

mod captures;
mod common;
mod fuzz;
mod wire;
