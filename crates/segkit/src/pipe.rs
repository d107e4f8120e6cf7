//! `segkit ... | head`: a closed stdout ends the process quietly, as it does for other Unix tools.
//!
//! Rust ignores SIGPIPE, so a write to a closed pipe returns an error and `println!` panics on
//! it ("failed printing to stdout"). With SIGPIPE's default action restored the process ends at
//! that write instead, silently; a training run ended this way resumes from its last checkpoint
//! like any other killed run.
//!
//! Invariant: called from `main` before any other thread starts.

/// Restores SIGPIPE's default action.
pub fn exit_on_closed_stdout() {
    #[cfg(unix)]
    // SAFETY: `signal` with SIG_DFL installs no handler code; it runs before other threads
    // exist, so nothing races with the change of disposition.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}
