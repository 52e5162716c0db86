//! What the typed errors of [`crate::image`], [`crate::pod`] and [`crate::trust`] share: inner
//! code builds anyhow context chains; each public call sorts its failure into its module's
//! `Error` (whose `From<anyhow::Error>` finds the cause that says what it is), chain kept.

/// Runs `f` (the body of a public call) and sorts what it fails with into `E`.
pub(crate) fn typed<T, E: From<anyhow::Error>>(
    f: impl FnOnce() -> anyhow::Result<T>,
) -> Result<T, E> {
    f().map_err(E::from)
}
