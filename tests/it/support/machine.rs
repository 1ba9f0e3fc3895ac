//! The machine's two cores, shared by tests that run QEMU.
//!
//! All end-to-end tests run in one test binary, two at a time (libtest's default: one thread
//! per core). Most of them are light (a `plinth serve`, a few clients, an emulated BMC) and run
//! beside anything. A QEMU virtual machine under TCG emulation keeps a core busy while it
//! boots, and some tests wait on it with deadlines of 90 s. So:
//! - a test that runs one VM at a time takes [`vm`] (shared): two such tests may overlap, as
//!   they always did inside one test file;
//! - a test that runs several VMs at once (the rack, the deploys, the demo) takes
//!   [`whole_machine`] (exclusive): no other VM test runs beside it, as when each was alone in
//!   a test binary of its own.
//!
//! A test that panics while holding a guard poisons nothing: the guard is taken again.

use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

static VMS: RwLock<()> = RwLock::new(());

/// Held while a test runs one VM at a time.
pub fn vm() -> RwLockReadGuard<'static, ()> {
    VMS.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held while a test runs several VMs at once.
pub fn whole_machine() -> RwLockWriteGuard<'static, ()> {
    VMS.write().unwrap_or_else(PoisonError::into_inner)
}
