//! A growable byte buffer in memory mapped outside the allocator, of the kernel's small
//! (4 KiB) pages: for a large buffer written once and then read here and there (the
//! profile snapshot's text).
//!
//! The allocator (mimalloc) asks for transparent huge pages, which is right for the
//! users' state (a checkpoint walks all of it, and misses the TLB less). On a virtual
//! machine whose host takes back free memory, a huge page is supplied at its first
//! touch at about ten times the cost per byte of small pages (README, "huge pages on a
//! virtual machine"): loading the 134 MB snapshot of the 2M-event benchmark spent half
//! of its time in the kernel zeroing them. Nothing walks the snapshot, so small pages
//! cost it nothing.

use std::io;
use std::ptr::NonNull;

/// Bytes in an anonymous private mapping, `MADV_NOHUGEPAGE`.
pub struct SmallPages {
    ptr: NonNull<u8>,
    len: usize,
    cap: usize,
}

// SAFETY: the mapping is owned by this value alone, as a `Vec<u8>`'s buffer is.
unsafe impl Send for SmallPages {}
// SAFETY: shared access only reads.
unsafe impl Sync for SmallPages {}

impl Default for SmallPages {
    fn default() -> Self {
        SmallPages {
            ptr: NonNull::dangling(),
            len: 0,
            cap: 0,
        }
    }
}

/// The kernel's small page.
const PAGE: usize = 4096;

impl SmallPages {
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the first `len` bytes of the mapping were written (`extend_from_slice`);
        // a dangling pointer with length 0 is a valid empty slice.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Drops the bytes from `len` on (the room stays mapped).
    pub fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }

    pub fn extend_from_slice(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.reserve(bytes.len())?;
        // SAFETY: `reserve` made room for `bytes` after the first `len` bytes; the
        // source is not in the mapping, which only this value writes.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(self.len),
                bytes.len(),
            );
        }
        self.len += bytes.len();
        Ok(())
    }

    /// Room for `additional` more bytes: the mapping at least doubles when it grows, so
    /// appends cost amortized constant time (`mremap` moves pages, not bytes).
    pub fn reserve(&mut self, additional: usize) -> io::Result<()> {
        let need = self
            .len
            .checked_add(additional)
            .ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        if need <= self.cap {
            return Ok(());
        }
        let cap = need
            .max(self.cap.saturating_mul(2))
            .max(16 * PAGE)
            .next_multiple_of(PAGE);
        // SAFETY: a fresh anonymous mapping, or the one this value owns resized (moved
        // if need be: nothing points into it but through `ptr`).
        let p = unsafe {
            if self.cap == 0 {
                libc::mmap(
                    std::ptr::null_mut(),
                    cap,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            } else {
                libc::mremap(
                    self.ptr.as_ptr().cast(),
                    self.cap,
                    cap,
                    libc::MREMAP_MAYMOVE,
                )
            }
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // Advice only: a kernel without transparent huge pages refuses it, and the
        // pages are small anyway.
        // SAFETY: advises on the mapping just made.
        unsafe { libc::madvise(p, cap, libc::MADV_NOHUGEPAGE) };
        self.ptr =
            NonNull::new(p.cast()).ok_or_else(|| io::Error::from(io::ErrorKind::OutOfMemory))?;
        self.cap = cap;
        Ok(())
    }
}

impl Drop for SmallPages {
    fn drop(&mut self) {
        if self.cap > 0 {
            // SAFETY: unmaps the mapping this value owns; nothing borrows it any more.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.cap) };
        }
    }
}

impl std::fmt::Debug for SmallPages {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SmallPages({} of {} bytes)", self.len, self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes appended across many growths read back whole; truncation keeps the room.
    #[test]
    fn appends_across_growths_read_back() {
        let mut b = SmallPages::default();
        assert!(b.as_slice().is_empty());
        let mut want = Vec::new();
        for i in 0..20_000u32 {
            let piece = i.to_le_bytes().repeat(1 + (i % 7) as usize);
            b.extend_from_slice(&piece).unwrap();
            want.extend_from_slice(&piece);
        }
        assert!(b.len() > 16 * PAGE * 4, "grew several times: {}", b.len());
        assert_eq!(b.as_slice(), &want[..]);
        b.truncate(10);
        b.extend_from_slice(b"end").unwrap();
        assert_eq!(b.as_slice(), [&want[..10], b"end"].concat());
        assert!(b.reserve(usize::MAX).is_err());
    }

    /// The pages are small: the mapping carries the kernel's no-huge-pages flag.
    #[test]
    fn the_mapping_asks_for_small_pages() {
        let mut b = SmallPages::default();
        b.extend_from_slice(&[7; 3 << 20]).unwrap();
        let Ok(smaps) = std::fs::read_to_string("/proc/self/smaps") else {
            return;
        };
        let start = format!("{:x}-", b.ptr.as_ptr() as usize);
        // An area's fields end with its `VmFlags`.
        let flags = smaps
            .lines()
            .skip_while(|l| !l.starts_with(&start))
            .find(|l| l.starts_with("VmFlags:"));
        assert!(flags.is_some_and(|l| l.contains(" nh")), "{flags:?}");
    }
}
