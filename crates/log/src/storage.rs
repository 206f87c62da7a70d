//! The file layer under the embedded log, behind a small trait so that tests can inject
//! faults: torn writes, failing fsync, a full disk.
//!
//! [`DiskStorage`] is the real thing (std::fs, positional I/O, `fdatasync`). Everything
//! the log does to the file system goes through [`Storage`] and [`SegmentFile`]; nothing
//! calls `std::fs` for data or index files directly.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// An open data or index file.
#[allow(clippy::len_without_is_empty)]
pub trait SegmentFile: Send + Sync + fmt::Debug {
    /// Reads up to `buf.len()` bytes at `pos`; returns how many were read (0 at the end).
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize>;
    /// Writes all of `buf` at `pos`, or fails (a short write is an error, never silent).
    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()>;
    /// Makes written data durable (`fdatasync`).
    fn sync_data(&self) -> io::Result<()>;
    /// Truncates or extends the file.
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// The file's current length.
    fn len(&self) -> io::Result<u64>;
    /// Starts writing `len` bytes at `pos` to disk and returns without waiting. A hint:
    /// it makes nothing durable (only [`sync_data`](Self::sync_data) does), and the
    /// default does nothing.
    fn start_writeback(&self, _pos: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The file system operations the log needs.
pub trait Storage: Send + Sync + fmt::Debug + 'static {
    /// Opens an existing file for reading and writing.
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Opens an existing file read-only (used by the offline tools).
    fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Creates a new file, failing if it exists.
    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>>;
    /// Makes a directory's entries (created, renamed, deleted files) durable.
    fn sync_dir(&self, path: &Path) -> io::Result<()>;
    /// Creates a directory and its parents.
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Removes a file.
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Renames a file (atomic within a file system).
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// Lists a directory's entries.
    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>>;
}

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct DiskStorage;

#[derive(Debug)]
struct DiskFile(File);

impl SegmentFile for DiskFile {
    fn read_at(&self, buf: &mut [u8], pos: u64) -> io::Result<usize> {
        loop {
            match self.0.read_at(buf, pos) {
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                other => return other,
            }
        }
    }

    fn write_all_at(&self, buf: &[u8], pos: u64) -> io::Result<()> {
        self.0.write_all_at(buf, pos)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    /// `sync_file_range(SYNC_FILE_RANGE_WRITE)`: no safe wrapper exists in rustix or
    /// nix, hence the one `unsafe` block of the workspace.
    #[cfg(target_os = "linux")]
    #[allow(unsafe_code)]
    fn start_writeback(&self, pos: u64, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let (Ok(pos), Ok(len)) = (i64::try_from(pos), i64::try_from(len)) else {
            return Ok(());
        };
        // SAFETY: the descriptor belongs to `self.0`, which is borrowed (so open) for
        // the whole call, and the call takes no pointers.
        let rc = unsafe {
            libc::sync_file_range(self.0.as_raw_fd(), pos, len, libc::SYNC_FILE_RANGE_WRITE)
        };
        if rc == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

impl Storage for DiskStorage {
    fn open(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn open_read_only(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        Ok(Arc::new(DiskFile(File::open(path)?)))
    }

    fn create_new(&self, path: &Path) -> io::Result<Arc<dyn SegmentFile>> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(path)?;
        Ok(Arc::new(DiskFile(file)))
    }

    fn sync_dir(&self, path: &Path) -> io::Result<()> {
        File::open(path)?.sync_all()
    }

    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        fs::create_dir_all(path)
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn list_dir(&self, path: &Path) -> io::Result<Vec<PathBuf>> {
        let mut out = Vec::new();
        for entry in fs::read_dir(path)? {
            out.push(entry?.path());
        }
        out.sort();
        Ok(out)
    }
}

/// Reads exactly `buf.len()` bytes at `pos`, or fails with `UnexpectedEof`.
pub(crate) fn read_exact_at(file: &dyn SegmentFile, buf: &mut [u8], pos: u64) -> io::Result<()> {
    let mut done = 0;
    while done < buf.len() {
        let n = file.read_at(&mut buf[done..], pos + done as u64)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file ends early",
            ));
        }
        done += n;
    }
    Ok(())
}

/// Reads the whole file.
pub(crate) fn read_all(file: &dyn SegmentFile) -> io::Result<Vec<u8>> {
    let len = file.len()? as usize;
    let mut buf = vec![0u8; len];
    read_exact_at(file, &mut buf, 0)?;
    Ok(buf)
}

/// Writes `bytes` to `path` atomically: a temporary file, fsync, rename, fsync of the dir.
pub(crate) fn write_file_atomic(
    storage: &dyn Storage,
    path: &Path,
    bytes: &[u8],
) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    remove_if_present(storage, &tmp)?;
    let file = storage.create_new(&tmp)?;
    file.write_all_at(bytes, 0)?;
    file.sync_data()?;
    storage.rename(&tmp, path)?;
    storage.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Removes a file; a file that is not there is fine.
pub(crate) fn remove_if_present(storage: &dyn Storage, path: &Path) -> io::Result<()> {
    match storage.remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn writeback_of_a_real_file_is_accepted_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let file = DiskStorage.create_new(&path).unwrap();
        let data = vec![7u8; 3 << 20];
        file.write_all_at(&data, 0).unwrap();
        file.start_writeback(0, 2 << 20).unwrap();
        file.start_writeback(2 << 20, 1 << 20).unwrap();
        assert_eq!(file.len().unwrap(), 3 << 20);
        assert_eq!(read_all(file.as_ref()).unwrap(), data);
    }
}
