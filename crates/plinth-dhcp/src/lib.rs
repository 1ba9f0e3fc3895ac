//! plinth-dhcp: the DHCPv4 server. `wire` is sans-IO (bytes in, bytes out); the server
//! owns sockets, spans and counters. It writes no SQL: lease and boot decisions come from
//! plinth-core.

pub mod server;
mod sys;
pub mod wire;
