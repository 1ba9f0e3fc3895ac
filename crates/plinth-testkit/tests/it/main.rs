//! plinth-testkit's own integration tests against the real programs: the network-namespace lab,
//! the browser harness, the Patroni cluster and the test databases.

mod browser;
mod lab;
mod patroni;
mod testdb;
