//! The IPMI 2.0 (RMCP+, "lanplus") driver: [`wire`] is the sans-IO codec and the RAKP and
//! cipher suite 3 cryptography; the session layer and the [`crate::Bmc`] implementation over
//! UDP 623 come next (issue #5).

pub mod wire;
