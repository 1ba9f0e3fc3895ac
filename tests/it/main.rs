//! The end-to-end tests: the real `plinth` binary (and `plinth-agent`, `plinth-lab`) against a
//! real PostgreSQL, real DHCP, TFTP and HTTP clients in network namespaces, emulated BMCs and
//! QEMU virtual machines. One test binary: `support` is what the modules share, and
//! `support::machine` keeps the tests that run VMs from crowding the machine's two cores.
//!
//! Run one module with `cargo test -p plinth --test it -- dhcp::`.

mod support;

mod bios;
mod bmc;
mod boot;
mod console;
mod console_cli;
mod credentials;
mod demo;
mod deploy;
mod dhcp;
mod disk_images;
mod e2e;
mod faults;
mod firmware;
mod ha;
mod hardware;
mod health;
mod lastseen;
mod listeners;
mod metrics;
mod rack;
mod security;
mod sol;
mod storm;
mod ui;
mod vmedia;
mod vmedia_rack;
