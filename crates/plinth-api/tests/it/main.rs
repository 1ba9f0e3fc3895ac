//! plinth-api's integration tests: the API, its OpenAPI contract, boot endpoints, listener
//! limits, web UI rules and upgrades over real HTTP, against a real PostgreSQL
//! (plinth-testkit's `api::TestApi`).

mod api;
mod bios;
mod boot;
mod console;
mod contract;
mod fetches;
mod firmware;
mod limits;
mod stream;
mod ui;
mod upgrade;
mod vmedia;
mod webhooks;
