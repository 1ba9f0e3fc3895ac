//! plinth-agent's integration tests: the agent binary against a real plinth API.

mod agent;
mod netdiag;
