//! plinth's read-only TFTP server (issue #4): what PXE firmware and iPXE fetch before HTTP.
//!
//! It owns three layers, from the bytes up:
//! - [`packet`]: the sans-IO codec, RFC 1350 packets and RFC 2347 option negotiation with
//!   blksize (RFC 2348), timeout and tsize (RFC 2349) and windowsize (RFC 7440);
//! - [`transfer`]: the sans-IO state machine of one read transfer (windows, retransmission with
//!   backoff, block-number wrap-around), driven by events and unit-tested without sockets;
//! - [`server`]: the UDP server: the listening socket, one task and one socket per transfer,
//!   timeouts, the bound on concurrent transfers, a tracing span per transfer, counters; a
//!   window of DATA leaves in one system call where the kernel segments UDP (`sys`).
//!
//! It must not decide which names may be served or where files live (that is a [`server::Source`],
//! in plinth backed by plinth-core's resolver), write SQL, or accept writes: write requests and
//! netascii are refused with an ERROR.

pub mod packet;
pub mod server;
mod sys;
pub mod transfer;

pub use server::{Config, Content, Counters, Refusal, Server, Snapshot, Source, run};
