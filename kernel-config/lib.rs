//! Locating ark guest kernels built by `kernel-config/build.sh`.
