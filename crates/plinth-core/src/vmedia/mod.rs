//! Booting a machine's ramdisk from virtual media instead of the network.
//!
//! The parts:
//! - `iso`: the sans-IO ISO 9660 + El Torito writer (a layout of extents: bytes in memory and
//!   ranges of the images root's files);
//! - `config`: what goes on a boot's ISO besides the files: the static network and its kernel
//!   argument (`plinth.net=`), and the `grub.cfg` with the ramdisk's command line (the same
//!   arguments the iPXE script gives it: [`crate::boot::ramdisk_args`]);
//! - `boot`: [`crate::App::prepare_vmedia_boot`] (mints the boot's agent token bound to the
//!   static address, records the boot, returns the ISO's unguessable URL) and
//!   [`crate::App::vmedia_iso`] (the ISO of a live boot, for the `/boot/vmedia/{id}.iso`
//!   endpoint).

mod boot;
mod config;
pub mod iso;

pub use boot::{VmediaBoot, VmediaIso};
pub use config::{StaticNet, grub_cfg};
