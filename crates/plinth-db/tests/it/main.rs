//! plinth-db's integration tests, against a real PostgreSQL (plinth-testkit's TestDb).

mod cluster;
mod errors;
mod feed;
mod migrations;
mod tokens;
