//! TAP devices: the host end of a kvm pod's NIC. stage1-kvm creates one inside the pod's network
//! namespace and hands the descriptor to the VMM, which only reads and writes frames on it (and
//! sets the offloads it negotiated with the guest); the VMM never needs the namespace itself.

use std::ffi::c_short;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;

const TUN_IOC_MAGIC: u8 = b'T';
// TUNSETIFF and friends are _IOW('T', n, int) even though TUNSETIFF's argument is a struct ifreq.
nix::ioctl_write_ptr_bad!(
    tun_set_iff,
    nix::request_code_write!(TUN_IOC_MAGIC, 202, std::mem::size_of::<libc::c_int>()),
    IfReqFlags
);

/// `struct ifreq` with the flags member of its union (40 bytes on Linux).
#[repr(C)]
#[derive(Debug)]
struct IfReqFlags {
    name: [u8; libc::IFNAMSIZ],
    flags: c_short,
    _pad: [u8; 22],
}

/// Opens `/dev/net/tun` and attaches it to the TAP interface `name` in the calling thread's
/// network namespace, creating the interface if it does not exist (it then lives as long as the
/// descriptor). `vnet_hdr`: frames carry a `virtio_net_hdr` (IFF_VNET_HDR), so checksum and
/// segmentation offloads can pass between the guest and the host stack. The descriptor is
/// close-on-exec; hand it to a child on purpose.
pub fn open_tap(name: &str, vnet_hdr: bool) -> io::Result<OwnedFd> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.bytes().any(|b| b == b'/' || b == 0)
    {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad TAP interface name {name:?}"),
        ));
    }
    let tun = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open("/dev/net/tun")?;
    let mut req = IfReqFlags {
        name: [0; libc::IFNAMSIZ],
        flags: 0,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let mut flags = libc::IFF_TAP | libc::IFF_NO_PI;
    if vnet_hdr {
        flags |= libc::IFF_VNET_HDR;
    }
    req.flags = c_short::try_from(flags).expect("TUN flags fit in a short");
    // SAFETY: `tun` is an open /dev/net/tun descriptor and `req` a properly sized, initialised
    // ifreq that outlives the call; the kernel only reads it.
    unsafe { tun_set_iff(tun.as_raw_fd(), &req) }.map_err(io::Error::from)?;
    Ok(OwnedFd::from(tun))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_bad_names() {
        for bad in ["", "a/b", "sixteen-bytes-xx"] {
            assert_eq!(
                open_tap(bad, true).unwrap_err().kind(),
                io::ErrorKind::InvalidInput,
                "{bad:?}"
            );
        }
    }

    #[test]
    fn creates_a_tap_that_lives_as_long_as_its_descriptor() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: creating a TAP needs root");
            return;
        }
        // In a thread of its own network namespace, so nothing shows on the host.
        std::thread::spawn(|| {
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
            let fd = open_tap("ark-test0", true).unwrap();
            assert!(nix::net::if_::if_nametoindex("ark-test0").is_ok());
            drop(fd);
            assert!(nix::net::if_::if_nametoindex("ark-test0").is_err());
        })
        .join()
        .unwrap();
    }

    #[test]
    fn ifreq_is_the_kernels_size() {
        assert_eq!(std::mem::size_of::<IfReqFlags>(), 40);
    }
}
