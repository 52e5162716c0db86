//! virtio-fs: a FUSE server inside the VMM sharing one host directory.
