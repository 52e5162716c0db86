//! The contract between ark's stages: the pod manifest stage0 writes, the stage2 config stage1
//! hands to guest-init, and the per-app exit statuses guest-init reports back. Kept in one small
//! crate so stage0, every stage1 and the static guest-init agree on one definition.
