//! The pod half of stage0: prepare a pod directory, hand it to a stage1, track its state.

pub mod cli;
