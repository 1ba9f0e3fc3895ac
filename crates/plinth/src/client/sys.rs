//! The client's only `unsafe`: SIGPIPE back to its default action.
//!
//! Rust starts every program with SIGPIPE ignored, so a write to a closed pipe fails with
//! EPIPE, and `println!` panics on that error ("failed printing to stdout: Broken pipe").
//! A command-line client is expected to end quietly when the reader went away
//! (`plinth machine list | head -1`), as every Unix tool does: with the default action the
//! kernel ends the process by SIGPIPE at that write. Network writes are unaffected: the
//! standard library and tokio send on sockets with `MSG_NOSIGNAL`.
#![allow(unsafe_code)]

pub fn default_sigpipe() {
    // SAFETY: `signal` with SIG_DFL installs no handler; `main` calls this once, before the
    // runtime starts any thread.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
