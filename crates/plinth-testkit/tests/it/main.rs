//! plinth-testkit's own integration tests: the network-namespace lab, the browser harness and
//! the Patroni cluster against the real programs.

mod browser;
mod lab;
mod patroni;
