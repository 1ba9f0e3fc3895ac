//! Booting a machine from virtual media: the per-boot ISO (`iso`, sans-IO) and what goes on it.

pub mod iso;
