//! The raw-file backend of a virtio-blk device.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use nix::fcntl::{fallocate, FallocateFlags, Flock, FlockArg};

use super::request::{Limits, ID_BYTES, SECTOR_SHIFT, SECTOR_SIZE};
use super::Error;

/// An opened, locked disk image.
pub struct Disk {
    file: Flock<File>,
    capacity_sectors: u64,
    read_only: bool,
    discard: bool,
    write_zeroes: bool,
    serial: [u8; ID_BYTES],
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("capacity_sectors", &self.capacity_sectors)
            .field("read_only", &self.read_only)
            .field("discard", &self.discard)
            .field("write_zeroes", &self.write_zeroes)
            .finish()
    }
}

impl Disk {
    /// Opens `path` (O_RDONLY when `read_only`) and takes a non-blocking flock on it: shared for
    /// read-only, exclusive for read-write, so no two VMs write one image and no VM writes an
    /// image another one reads.
    pub fn open(path: &Path, read_only: bool) -> Result<Disk, Error> {
        let ctx = |source| Error::Open {
            path: path.to_path_buf(),
            source,
        };
        let file = OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(path)
            .map_err(ctx)?;
        let meta = file.metadata().map_err(ctx)?;
        let file_type = meta.file_type();
        use std::os::unix::fs::FileTypeExt;
        if !file_type.is_file() && !file_type.is_block_device() {
            return Err(Error::NotAFile(path.to_path_buf()));
        }
        let lock = if read_only {
            FlockArg::LockSharedNonblock
        } else {
            FlockArg::LockExclusiveNonblock
        };
        let mut file = Flock::lock(file, lock).map_err(|(_, errno)| Error::Locked {
            path: path.to_path_buf(),
            source: std::io::Error::from(errno),
        })?;
        // Works for regular files and block devices alike.
        let size = file.seek(SeekFrom::End(0)).map_err(ctx)?;
        let capacity_sectors = size >> SECTOR_SHIFT;

        let mut serial = [0u8; ID_BYTES];
        let id = format!("ark{:x}{:x}", meta.dev(), meta.ino());
        let n = id.len().min(ID_BYTES);
        serial[..n].copy_from_slice(&id.as_bytes()[..n]);

        let (discard, write_zeroes) = if read_only {
            (false, false)
        } else {
            // Probe past the end with KEEP_SIZE: a no-op that only tells whether the filesystem
            // (or block device) implements the operation.
            // A size past off_t (impossible for a real file) means no probe: unsupported.
            let end = libc::off_t::try_from(capacity_sectors << SECTOR_SHIFT);
            let sector = libc::off_t::try_from(SECTOR_SIZE).expect("512");
            let probe = |flags| {
                end.is_ok_and(|end| {
                    fallocate(
                        file.as_raw_fd(),
                        flags | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                        end,
                        sector,
                    )
                    .is_ok()
                })
            };
            (
                probe(FallocateFlags::FALLOC_FL_PUNCH_HOLE),
                probe(FallocateFlags::FALLOC_FL_ZERO_RANGE),
            )
        };

        Ok(Disk {
            file,
            capacity_sectors,
            read_only,
            discard,
            write_zeroes,
            serial,
        })
    }

    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn supports_discard(&self) -> bool {
        self.discard
    }

    pub fn supports_write_zeroes(&self) -> bool {
        self.write_zeroes
    }

    /// The GET_ID answer: derived from the image's device and inode, so it is stable across
    /// boots of the same image and distinct between images.
    pub fn serial(&self) -> [u8; ID_BYTES] {
        self.serial
    }

    pub fn limits(&self) -> Limits {
        Limits {
            capacity_sectors: self.capacity_sectors,
            read_only: self.read_only,
            flush: !self.read_only,
            discard: self.discard,
            write_zeroes: self.write_zeroes,
        }
    }

    pub(super) fn file(&self) -> &File {
        &self.file
    }

    pub(super) fn file_mut(&mut self) -> &mut File {
        &mut self.file
    }

    fn fallocate(&self, flags: FallocateFlags, offset: u64, len: u64) -> std::io::Result<()> {
        let offset = libc::off_t::try_from(offset).map_err(std::io::Error::other)?;
        let len = libc::off_t::try_from(len).map_err(std::io::Error::other)?;
        fallocate(
            self.file.as_raw_fd(),
            flags | FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        )
        .map_err(std::io::Error::from)
    }

    pub(super) fn punch_hole(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.fallocate(FallocateFlags::FALLOC_FL_PUNCH_HOLE, offset, len)
    }

    pub(super) fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if len == 0 {
            return Ok(());
        }
        self.fallocate(FallocateFlags::FALLOC_FL_ZERO_RANGE, offset, len)
    }
}
