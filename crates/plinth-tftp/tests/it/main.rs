//! plinth-tftp's integration tests: the server against real clients in network namespaces, and
//! against a client written packet by packet on loopback.

mod clients;
mod loopback;
