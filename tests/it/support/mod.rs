//! What the end-to-end tests share: the `plinth` binary under test, a fresh database and an
//! `App` on it (`env`), the images root and `plinth serve` on a lab interface (`lab`), the
//! virtual rack's VMs and BMCs (`rack`), `plinth serve` as a child process with its CLI,
//! tokens and BMC enrollment (`serve`), and the locks that keep VM tests apart (`machine`).

pub mod env;
pub mod lab;
pub mod machine;
pub mod rack;
pub mod serve;

use std::path::PathBuf;

/// The `plinth` binary this package's test build made.
pub const BIN: &str = env!("CARGO_BIN_EXE_plinth");

/// The `plinth` that [`serve::serve_in_ns`] starts: [`BIN`], or `PLINTH_SERVE_BIN` when set
/// (the benchmarks of scripts/bench-ha.sh point it at a release build).
pub fn serve_bin() -> PathBuf {
    std::env::var_os("PLINTH_SERVE_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(BIN))
}

/// The workspace's root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}
