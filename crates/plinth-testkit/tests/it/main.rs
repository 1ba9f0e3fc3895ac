//! plinth-testkit's own integration tests: the network-namespace lab and the browser harness
//! against the real programs.

mod browser;
mod lab;
