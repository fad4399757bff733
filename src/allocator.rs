//! The allocator's settings (mimalloc, the binary's global allocator).
//!
//! mimalloc gives pages that fall free back to the kernel 10 ms later (`purge_delay`;
//! `MADV_DONTNEED`). The job frees and takes back the same memory within much less than
//! that, batch after batch (decoded events, look-up answers, history buffers that grow),
//! so every round-trip faulted the pages in and had the kernel zero them again: 24,500 to
//! 47,400 page faults on the 2M-event run, against 630-1,400 with a 100 ms delay; the
//! kernel's share of the CPU fell by a quarter and the peak RSS rose by 3-7 MiB (README,
//! "Freed pages kept 100 ms").

use std::ffi::c_long;

use libmimalloc_sys::{mi_option_get, mi_option_set, mi_option_t};

/// `mi_option_purge_delay` in mimalloc's v2 `mimalloc.h`: the option after
/// `mi_option_eager_commit_delay` (14), which `libmimalloc_sys` names but this one not.
const PURGE_DELAY: mi_option_t = 15;

/// How long a free page stays with the process before it goes back to the kernel.
pub const PURGE_DELAY_MS: c_long = 100;

/// Sets the allocator's options; called first thing in `main` (mimalloc's options are
/// meant to be set before threads start). `MIMALLOC_PURGE_DELAY` in the environment
/// still wins, as mimalloc documents for its options.
pub fn tune() {
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets a number in mimalloc's option table; called before any other
        // thread exists.
        unsafe { mi_option_set(PURGE_DELAY, PURGE_DELAY_MS) };
    }
}

/// The size of the block mimalloc gives for `n` bytes (its size class; at least `n`).
pub fn block_size(n: usize) -> usize {
    // SAFETY: a pure computation on a number; it touches no memory.
    unsafe { libmimalloc_sys::mi_good_size(n) }.max(n)
}

/// The purge delay in effect, in ms.
pub fn purge_delay_ms() -> c_long {
    // SAFETY: reads a number from mimalloc's option table.
    unsafe { mi_option_get(PURGE_DELAY) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A block holds what was asked, within a size class of it: 12-25% apart, at most
    /// a page's rounding for large blocks.
    #[test]
    fn blocks_are_sizes_rounded_up_to_their_class() {
        for n in [0, 1, 7, 8, 9, 54, 100, 1000, 1025, 5_000, 70_000, 1 << 20] {
            let b = block_size(n);
            assert!(b >= n && b <= n + n / 4 + 64 * 1024, "{n}: {b}");
            assert_eq!(block_size(b), b, "a block's size is its own class");
        }
    }

    /// Anchors the option's number: the one before it keeps its name and number, and
    /// the purge delay reads mimalloc's documented default (10 ms) until it is set.
    #[test]
    fn the_purge_delay_is_the_option_after_eager_commit_delay() {
        assert_eq!(
            libmimalloc_sys::mi_option_eager_commit_delay,
            PURGE_DELAY - 1
        );
        if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
            assert_eq!(purge_delay_ms(), 10, "mimalloc's default before `tune`");
            tune();
            assert_eq!(purge_delay_ms(), PURGE_DELAY_MS);
        }
    }
}
