//! Trust: OpenPGP keys per image-name prefix, and signature verification (ACI detached
//! signatures, containers-image "simple signing").

pub mod cli;
