//! plinth-client's integration tests: the typed client against a real plinth API.

mod client;
mod console;
