//! virtio-blk request parsing and execution against a small scratch image.
#![no_main]

use std::sync::{Mutex, OnceLock};

use libfuzzer_sys::fuzz_target;
use vmm::devices::block::{request, Disk};

static DISK: OnceLock<(tempfile::NamedTempFile, Mutex<Disk>)> = OnceLock::new();

fuzz_target!(|data: &[u8]| {
    let (_file, disk) = DISK.get_or_init(|| {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(64 * 512).unwrap();
        let disk = Disk::open(file.path(), false).unwrap();
        (file, Mutex::new(disk))
    });
    let mut disk = disk.lock().unwrap();
    ark_vmm_fuzz::with_chain(data, None, |mem, chain| {
        let used = request::handle_chain(mem, chain, &mut disk);
        // A used length is the bytes written into the chain: never more than guest memory.
        assert!(used as usize <= ark_vmm_fuzz::MEM_SIZE);
    });
});
