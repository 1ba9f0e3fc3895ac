//! plinth's TFTP server (issue #4), read-only. `packet` is the sans-IO codec: RFC 1350 packets,
//! RFC 2347 option negotiation with blksize (RFC 2348), timeout and tsize (RFC 2349) and
//! windowsize (RFC 7440). The server (sockets, transfers, the file resolver) builds on it.

pub mod packet;
