//! A part's file written around the page cache (`O_DIRECT`), where the file system
//! allows it.
//!
//! Through the page cache, every byte of a part was copied into cache pages the kernel
//! had to find first; on a virtual machine whose host takes back the guest's free memory
//! (free page reporting), those were pages the host had to supply again, and the copy
//! cost the writer more CPU than compressing the part (README, "Checkpoint files around
//! the page cache"). A part is written once, synced and rarely read again, so the cache
//! gains nothing from it. Where `O_DIRECT` is refused (tmpfs, some network file
//! systems), the file is written through the cache as before.

use std::alloc::{Layout, alloc_zeroed, dealloc};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::ptr::NonNull;

/// What `O_DIRECT` needs aligned: buffer addresses, lengths and file offsets (the
/// largest logical block size in use).
const ALIGN: usize = 4096;
/// Bytes gathered before a write.
const CHUNK: usize = 1 << 20;

/// A buffer of `CHUNK` bytes at an `ALIGN`ed address.
struct Aligned(NonNull<u8>);

impl Aligned {
    fn layout() -> Layout {
        // Both are powers of two and CHUNK is a multiple of ALIGN.
        Layout::from_size_align(CHUNK, ALIGN).unwrap_or_else(|_| unreachable!())
    }

    fn new() -> Self {
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc_zeroed(Self::layout()) };
        match NonNull::new(ptr) {
            Some(ptr) => Aligned(ptr),
            None => std::alloc::handle_alloc_error(Self::layout()),
        }
    }

    fn bytes(&mut self) -> &mut [u8] {
        // SAFETY: the allocation is CHUNK bytes, initialized (zeroed), and owned here.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), CHUNK) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { dealloc(self.0.as_ptr(), Self::layout()) }
    }
}

thread_local! {
    /// The buffer of this thread's last writer: a writer thread writes part after part,
    /// and fresh memory is what this module avoids.
    static SPARE: std::cell::Cell<Option<Aligned>> = const { std::cell::Cell::new(None) };
}

/// Writes a new file in `CHUNK`s from an aligned buffer, with `O_DIRECT` when the file
/// system takes it; `finish` writes the rest and gives the file back (not yet synced).
pub struct DirectWriter {
    file: File,
    buf: Aligned,
    len: usize,
    written: u64,
    direct: bool,
}

impl DirectWriter {
    /// Creates `path` (truncating it), for writing around the page cache if it can.
    pub fn create(path: &Path) -> io::Result<Self> {
        Self::create_with(path, true)
    }

    fn create_with(path: &Path, try_direct: bool) -> io::Result<Self> {
        let open = |flags| {
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .custom_flags(flags)
                .open(path)
        };
        let (file, direct) = match try_direct.then(|| open(libc::O_DIRECT)) {
            Some(Ok(file)) => (file, true),
            Some(Err(e)) if e.raw_os_error() != Some(libc::EINVAL) => return Err(e),
            _ => (open(0)?, false),
        };
        Ok(DirectWriter {
            file,
            buf: SPARE.take().unwrap_or_else(Aligned::new),
            len: 0,
            written: 0,
            direct,
        })
    }

    /// Whether the file is being written around the page cache.
    #[cfg(test)]
    fn is_direct(&self) -> bool {
        self.direct
    }

    /// Writes the first `n` bytes of the buffer (`n` a multiple of `ALIGN` while direct).
    fn write_out(&mut self, n: usize) -> io::Result<()> {
        let mut at = 0;
        while at < n {
            let chunk = &self.buf.bytes()[at..n];
            match (&self.file).write(chunk) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(k) => at += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                // Opened, but refused at the first write (some file systems check only
                // then): on through the page cache.
                Err(e) if self.direct && e.raw_os_error() == Some(libc::EINVAL) => {
                    self.stop_direct()?
                }
                Err(e) => return Err(e),
            }
        }
        self.written += n as u64;
        Ok(())
    }

    /// Gives the buffer back to the thread for its next writer.
    fn recycle(self) -> File {
        SPARE.set(Some(self.buf));
        self.file
    }

    fn stop_direct(&mut self) -> io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor this writer owns.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        // SAFETY: as above.
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFL, flags & !libc::O_DIRECT) } < 0 {
            return Err(io::Error::last_os_error());
        }
        self.direct = false;
        Ok(())
    }

    /// Writes what is left and sets the file's length; the file is not synced.
    pub fn finish(mut self) -> io::Result<File> {
        let len = self.len;
        if self.direct {
            // The last write is padded to a whole block, then cut back to the length.
            let padded = len.div_ceil(ALIGN) * ALIGN;
            self.buf.bytes()[len..padded].fill(0);
            self.write_out(padded)?;
            self.file.set_len(self.written - (padded - len) as u64)?;
        } else {
            self.write_out(len)?;
        }
        Ok(self.recycle())
    }
}

impl Write for DirectWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.len);
        let at = self.len;
        self.buf.bytes()[at..at + n].copy_from_slice(&data[..n]);
        self.len += n;
        if self.len == CHUNK {
            self.write_out(CHUNK)?;
            self.len = 0;
        }
        Ok(n)
    }

    /// Nothing: only whole blocks can be written before `finish`.
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pattern(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Lengths around the block and chunk sizes come back byte for byte, written in
    /// pieces of odd sizes; the file is exactly as long as what was written.
    #[test]
    fn files_read_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        for n in [
            0,
            1,
            ALIGN - 1,
            ALIGN,
            ALIGN + 1,
            CHUNK - 1,
            CHUNK,
            CHUNK + 5,
            3 * CHUNK + 4097,
        ] {
            let path = dir.path().join(format!("f{n}"));
            let data = pattern(n);
            let mut w = DirectWriter::create(&path).unwrap();
            for piece in data.chunks(65_534) {
                w.write_all(piece).unwrap();
            }
            let file = w.finish().unwrap();
            assert_eq!(file.metadata().unwrap().len(), n as u64, "{n}");
            assert_eq!(std::fs::read(&path).unwrap(), data, "{n}");
        }
    }

    /// The same bytes through the page cache: a file system that refuses `O_DIRECT`
    /// at the open, or (`stop_direct`) at a write after some were written.
    #[test]
    fn the_fallbacks_write_the_same_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let data = pattern(2 * CHUNK + 777);
        let path = dir.path().join("buffered");
        let mut w = DirectWriter::create_with(&path, false).unwrap();
        assert!(!w.is_direct());
        w.write_all(&data).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);

        let path = dir.path().join("stopped");
        let mut w = DirectWriter::create(&path).unwrap();
        w.write_all(&data[..CHUNK + 10]).unwrap();
        w.stop_direct().unwrap();
        w.write_all(&data[CHUNK + 10..]).unwrap();
        w.finish().unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
    }

    /// On the disk file systems a checkpoint directory is usually on, `O_DIRECT` is used.
    #[test]
    fn direct_on_disk_file_systems() {
        let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
        // SAFETY: statfs fills the struct it is given; the path is a valid C string.
        let fs_type = unsafe {
            let mut st: libc::statfs = std::mem::zeroed();
            let path = std::ffi::CString::new(dir.path().as_os_str().as_encoded_bytes()).unwrap();
            assert_eq!(libc::statfs(path.as_ptr(), &mut st), 0);
            st.f_type
        };
        const EXT4: libc::c_long = 0xEF53;
        const XFS: libc::c_long = 0x5846_5342;
        let w = DirectWriter::create(&dir.path().join("part")).unwrap();
        if [EXT4, XFS].contains(&(fs_type as libc::c_long)) {
            assert!(w.is_direct(), "file system {fs_type:#x}");
        }
    }
}
