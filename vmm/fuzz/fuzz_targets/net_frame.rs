//! virtio-net: one tx chain parsed into a frame, and one rx chain filled with a frame, as the
//! device does with whatever a hostile driver queued. The first input byte picks the direction
//! and, for rx, the frame length.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::net::request::{self, MAX_BUFFER_LEN, VNET_HDR_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    ark_vmm_fuzz::with_chain(rest, None, |mem, chain| {
        if mode & 1 == 0 {
            let mut buf = Vec::new();
            if let Ok(len) = request::read_tx_frame(mem, chain, &mut buf) {
                // A frame is at least a header and never more than the TAP takes.
                assert!((VNET_HDR_LEN..=MAX_BUFFER_LEN).contains(&len));
                assert_eq!(len, buf.len());
            }
        } else {
            // Up to 32 KiB: more than most fuzzed chains hold, so "does not fit" is reached too.
            let frame = vec![0xa5u8; usize::from(mode >> 1) * 256];
            if let Ok(used) = request::write_rx_frame(mem, chain, &frame) {
                assert_eq!(used as usize, frame.len());
            }
        }
    });
});
