//! Process-wide allocator settings, applied once before any tensor exists.
//!
//! Why: Burn's CPU backend allocates a fresh buffer for nearly every tensor op, and glibc serves
//! every allocation above 32 MiB (FCN's 64-channel maps at 424x424 are 46 MiB) with its own `mmap`
//! and returns it with `munmap` when freed. Each training step then page-faults its whole working
//! set back in and the kernel zeroes every page: on the 2-core benchmark machine that was 12-17%
//! of all FCN-8s training cycles (`clear_page_erms` in `perf`), and the SGD update, which touches
//! 134 M parameters, spent most of its time there. Serving large blocks from the heap and never
//! trimming it keeps freed pages mapped for the next step (docs/BENCHMARKS.md has the before and
//! after). The cost is a higher resident set (freed memory is kept, not returned to the system).
//!
//! Invariants: this runs in `main` before other threads start (`mallopt` is not meant to race with
//! allocations in other threads); it only changes glibc's policy, never correctness; users can
//! opt out with `SEGKIT_MALLOC=system`, and a `GLIBC_TUNABLES` that already sets malloc options
//! wins (we leave it alone).

/// Applies the settings above where they exist (Linux with glibc); returns whether it did.
pub fn tune_for_tensors() -> bool {
    if std::env::var("SEGKIT_MALLOC").is_ok_and(|v| v == "system") {
        return false;
    }
    if std::env::var("GLIBC_TUNABLES").is_ok_and(|v| v.contains("glibc.malloc.")) {
        return false;
    }
    imp::apply()
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn apply() -> bool {
        // SAFETY: `mallopt` only changes glibc's allocation policy; it is called from `main`
        // before any other thread exists. Each call returns 1 on success.
        unsafe {
            // No allocation is served by its own mmap: large tensors come from the heap, so a
            // freed buffer is reused by the next step instead of being unmapped and re-faulted.
            let no_mmap = libc::mallopt(libc::M_MMAP_MAX, 0) == 1;
            // Never give the top of the heap back: the next step needs the same memory again.
            let no_trim = libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX) == 1;
            // Grow the heap in 256 MiB steps rather than one page-rounded request at a time.
            let pad = libc::mallopt(libc::M_TOP_PAD, 256 << 20) == 1;
            no_mmap && no_trim && pad
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    /// Other allocators (musl, macOS, Windows) have their own policies; nothing to set.
    pub fn apply() -> bool {
        false
    }
}

#[cfg(test)]
mod tests {
    /// On glibc every `mallopt` call must be accepted (a rejected option would silently leave the
    /// slow policy in place); elsewhere nothing is applied. Allocating and freeing a block larger
    /// than glibc's mmap ceiling afterwards must still work.
    #[test]
    fn settings_are_accepted_where_glibc_is_the_allocator() {
        let applied = super::imp::apply();
        assert_eq!(applied, cfg!(all(target_os = "linux", target_env = "gnu")));
        let big = vec![1u8; 64 << 20];
        assert_eq!(big.iter().map(|&b| b as usize).sum::<usize>(), 64 << 20);
    }
}
