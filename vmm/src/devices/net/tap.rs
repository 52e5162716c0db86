//! The TAP descriptor behind a virtio-net device: checked to be a vnet-header TAP, made
//! non-blocking, and told which offloads the guest accepted.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::request::VNET_HDR_LEN;
use super::Error;
use crate::config::TapSource;

/// Offload flags (`TUN_F_*`) a TAP may use towards the guest.
pub type Offloads = libc::c_uint;

#[derive(Debug)]
pub struct Tap {
    file: File,
}

impl Tap {
    /// Opens `source`: a TAP interface by name in the caller's network namespace, or a dup of a
    /// descriptor the caller keeps (it stays the caller's to close).
    pub fn open(source: &TapSource) -> Result<Tap, Error> {
        let fd = match source {
            TapSource::Name(name) => {
                ark_os::tap::open_tap(name, true).map_err(|source| Error::OpenTap {
                    name: name.clone(),
                    source,
                })?
            }
            TapSource::Fd(fd) => dup(*fd)?,
        };
        Tap::new(fd)
    }

    /// Takes `fd`, which must be a TAP opened with IFF_TAP|IFF_NO_PI|IFF_VNET_HDR (anything
    /// else would put frames on the wire without, or with a different, header). Sets the header
    /// size, no offloads until a guest accepts them, and O_NONBLOCK (on the open file
    /// description: shared with any dup the caller keeps).
    pub fn new(fd: OwnedFd) -> Result<Tap, Error> {
        let file = File::from(fd);
        let flags = tap_flags(file.as_raw_fd())?;
        let want = libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR;
        if flags & want != want || flags & libc::IFF_TUN != 0 {
            return Err(Error::NotVnetTap(flags));
        }
        nix::fcntl::fcntl(
            file.as_raw_fd(),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        )
        .map_err(|e| Error::TapIoctl {
            what: "O_NONBLOCK",
            source: e.into(),
        })?;
        let tap = Tap { file };
        tap.set_vnet_hdr_len()?;
        tap.set_offloads(0)?;
        Ok(tap)
    }

    /// TUNSETVNETHDRSZ: every virtio 1.x header is a `virtio_net_hdr_v1`, whatever the features.
    pub fn set_vnet_hdr_len(&self) -> Result<(), Error> {
        let len = libc::c_int::try_from(VNET_HDR_LEN).expect("12");
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer, which outlives the call.
        let rc = unsafe { libc::ioctl(self.file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &len) };
        check(rc, "TUNSETVNETHDRSZ")
    }

    /// TUNSETOFFLOAD: which partial checksums and GSO frames the TAP may hand the guest.
    pub fn set_offloads(&self, offloads: Offloads) -> Result<(), Error> {
        // SAFETY: TUNSETOFFLOAD takes its flags by value; no memory is passed.
        let rc = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::TUNSETOFFLOAD,
                libc::c_ulong::from(offloads),
            )
        };
        check(rc, "TUNSETOFFLOAD")
    }

    /// One frame (header included) into `buf`; `WouldBlock` when none is queued.
    pub fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.file.read(buf)
    }

    /// One frame (header included); the TAP takes it whole or refuses it.
    pub fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        self.file.write(frame)
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

fn check(rc: libc::c_int, what: &'static str) -> Result<(), Error> {
    if rc < 0 {
        return Err(Error::TapIoctl {
            what,
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// The interface flags of a TUN/TAP descriptor (TUNGETIFF); fails for anything else.
fn tap_flags(fd: RawFd) -> Result<libc::c_int, Error> {
    // SAFETY: ifreq is plain data, all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    // SAFETY: TUNGETIFF writes a struct ifreq into the pointer, which is one and outlives the call.
    let rc = unsafe { libc::ioctl(fd, libc::TUNGETIFF, &mut req) };
    check(rc, "TUNGETIFF (is it a TAP?)")?;
    // SAFETY: TUNGETIFF fills the flags member of the union.
    Ok(libc::c_int::from(unsafe { req.ifr_ifru.ifru_flags }))
}

/// A close-on-exec duplicate of the caller's `fd`.
fn dup(fd: RawFd) -> Result<OwnedFd, Error> {
    // SAFETY: F_DUPFD_CLOEXEC only reads the descriptor table; a closed `fd` gives EBADF.
    let new = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if new < 0 {
        return Err(Error::DupFd {
            fd,
            source: io::Error::last_os_error(),
        });
    }
    // SAFETY: `new` is a descriptor this call just created and nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}
