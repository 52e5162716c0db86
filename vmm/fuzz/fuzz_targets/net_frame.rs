//! virtio-net: one tx chain parsed into a frame, one rx chain filled with a whole frame, or (as
//! with VIRTIO_NET_F_MRG_RXBUF) one rx chain filled with its share of a frame, as the device does
//! with whatever a hostile driver queued. The first input byte picks the mode (low 2 bits) and,
//! for rx, the frame length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vm_memory::GuestMemory as _;
use vmm::devices::net::request::{self, MAX_BUFFER_LEN, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    // Up to 16 KiB: more than most fuzzed chains hold, so "does not fit" is reached too.
    let frame = vec![0xa5u8; usize::from(mode >> 2) * 256];
    ark_vmm_fuzz::with_chain(rest, None, |mem, chain| match mode & 3 {
        0 | 3 => {
            let mut buf = Vec::new();
            if let Ok(len) = request::read_tx_frame(mem, chain, &mut buf) {
                // A frame is at least a header and never more than the TAP takes.
                assert!((VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&len));
                assert_eq!(len, buf.len());
            }
        }
        1 => {
            if let Ok(used) = request::write_rx_frame(mem, chain, &frame) {
                assert_eq!(used as usize, frame.len());
            }
        }
        _ => {
            let mut segs = Vec::new();
            if let Ok(cap) = request::rx_chain_segments(mem, chain, &mut segs) {
                // Every range it kept is inside guest memory and none is empty.
                assert!(segs
                    .iter()
                    .all(|&(a, l)| l > 0 && mem.check_range(a, l as usize)));
                let sum: u64 = segs.iter().map(|&(_, l)| u64::from(l)).sum();
                assert_eq!(sum, cap);
                let n = request::write_segments(mem, &segs, &frame).unwrap();
                assert_eq!(n as u64, cap.min(frame.len() as u64));
            } else {
                assert!(segs.is_empty(), "a refused chain leaves no range");
            }
        }
    });
});
