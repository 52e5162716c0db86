//! virtio-fs: FUSE request validation and the FUSE server over a scratch shared directory
//! (read-write, so mutating opcodes are exercised too).
#![no_main]

use std::sync::OnceLock;

use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, Opcode};
use libfuzzer_sys::fuzz_target;
use vm_memory::ByteValued;
use vmm::devices::fs::{build_server, request, CacheMode, FuseServer};

static SERVER: OnceLock<(tempfile::TempDir, FuseServer)> = OnceLock::new();

/// FUSE INIT through the same path, so later requests find the root inode.
fn init(server: &FuseServer) {
    let header = InHeader {
        len: 56,
        opcode: Opcode::Init as u32,
        unique: 1,
        ..Default::default()
    };
    let init = InitIn {
        major: 7,
        minor: 33,
        max_readahead: 0x20000,
        flags: 0,
    };
    let mut payload = header.as_slice().to_vec();
    payload.extend_from_slice(init.as_slice());
    payload.resize(payload.len() + 256, 0);
    // Descriptor 0: the 56-byte request (readable, NEXT); descriptor 1: 256 writable bytes.
    let mut input = vec![2u8, 0, 0, 56, 0, 1, 1, 56, 0, 0, 1, 2, 0];
    input.extend_from_slice(&payload);
    ark_vmm_fuzz::with_chain(&input, None, |mem, chain| {
        let used = request::handle_chain(server, mem, chain);
        assert!(used >= 16, "INIT failed");
    });
}

fuzz_target!(|data: &[u8]| {
    let (_dir, server) = SERVER.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("file"), b"fuzz").unwrap();
        std::fs::create_dir(dir.path().join("dir")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("link")).unwrap();
        let (server, _) = build_server(dir.path(), false, CacheMode::Shared).unwrap();
        init(&server);
        (dir, server)
    });
    ark_vmm_fuzz::with_chain(data, None, |mem, chain| {
        request::handle_chain(server, mem, chain);
    });
});
