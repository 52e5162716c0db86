//! virtio-vsock with a hybrid (Unix socket) host side, like Firecracker.
