//! Asking the CPU for memory ahead of its use: look-ups over many users are cold memory,
//! and fetches asked for one after another overlap where loads waited on each in turn.

/// Asks for the cache line at `p` (for reading soon). A hint: it reads nothing the
/// program sees and never faults, whatever the address.
#[inline(always)]
pub fn line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch is a hint: it reads nothing the program sees and never faults,
    // whatever the address.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Asks for every line of `*p`.
#[inline(always)]
pub fn lines<T>(p: *const T) {
    let (start, size) = (p.cast::<u8>(), std::mem::size_of::<T>());
    for at in (0..size).step_by(64) {
        line(start.wrapping_add(at));
    }
    // The last line, where `p` is not at a line's start.
    line(start.wrapping_add(size.saturating_sub(1)));
}
