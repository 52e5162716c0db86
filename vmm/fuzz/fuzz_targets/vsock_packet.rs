//! virtio-vsock tx packet parsing (the vsock device's guest → host parser).
#![no_main]

use libfuzzer_sys::fuzz_target;
use vmm::devices::vsock::packet::parse_tx;

const GUEST_CID: u64 = 3;

fuzz_target!(|data: &[u8]| {
    ark_vmm_fuzz::with_chain(data, None, |mem, chain| {
        let mut payload = Vec::new();
        if let Ok(hdr) = parse_tx(mem, chain, GUEST_CID, &mut payload) {
            assert_eq!(hdr.src_cid, GUEST_CID);
            assert!(payload.len() <= ark_vmm_fuzz::MEM_SIZE);
        }
    });
});
