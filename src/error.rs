//! The typed error of [`crate::image`], [`crate::pod`] and [`crate::trust`]: one [`Error<K>`]
//! whose `K` is the module's `ErrorKind`. Inner code builds anyhow context chains; each public
//! call sorts its failure into its module's kind (by the first cause in the chain that says
//! what it is) and keeps the whole chain, whose `Display` is the message `ark` prints.

use std::fmt;

/// What kind of failure a module's calls tell apart, for a front end to match on.
pub trait Kind: Copy + fmt::Debug + Send + Sync + 'static {
    /// Reading or writing failed (an [`std::io::Error`] in the chain says nothing more).
    const IO: Self;
    /// Nothing in the chain says what it is.
    const OTHER: Self;

    /// The kind a cause from outside this module says (a store error, another module's typed
    /// error); [`Marked`] causes of this kind and I/O errors are sorted without it.
    fn of_cause(_cause: &(dyn std::error::Error + 'static)) -> Option<Self> {
        None
    }

    /// A cause with `message` that sorts the chain it ends as this kind.
    fn marked(self, message: impl Into<String>) -> Marked<Self> {
        Marked {
            kind: self,
            message: message.into(),
        }
    }
}

/// A failure of kind `K`, with its whole context chain (sources kept).
pub struct Error<K> {
    kind: K,
    chain: anyhow::Error,
}

impl<K: Kind> Error<K> {
    /// A failure of `kind` whose message and causes are `chain`.
    pub fn new(kind: K, chain: anyhow::Error) -> Self {
        Error { kind, chain }
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// The same kind of failure, with `chain` as its message and causes.
    pub fn with_chain(self, chain: anyhow::Error) -> Self {
        Error::new(self.kind, chain)
    }
}

impl<K: Kind> From<anyhow::Error> for Error<K> {
    /// Sorts an error by the first cause in its chain that says what it is.
    fn from(chain: anyhow::Error) -> Self {
        let kind = chain
            .chain()
            .find_map(|cause| {
                if let Some(marked) = cause.downcast_ref::<Marked<K>>() {
                    return Some(marked.kind);
                }
                K::of_cause(cause).or_else(|| cause.is::<std::io::Error>().then_some(K::IO))
            })
            .unwrap_or(K::OTHER);
        Error::new(kind, chain)
    }
}

impl<K> fmt::Debug for Error<K>
where
    K: fmt::Debug,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({:?})", self.kind, self.chain)
    }
}

/// The chain's message: `{:#}` gives every cause, joined with ": ".
impl<K> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.chain, f)
    }
}

impl<K: fmt::Debug> std::error::Error for Error<K> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.chain.source()
    }
}

/// A cause that says what kind of failure its chain is (see [`Kind::marked`]).
#[derive(Debug)]
pub struct Marked<K> {
    kind: K,
    message: String,
}

impl<K> fmt::Display for Marked<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl<K: fmt::Debug> std::error::Error for Marked<K> {}

/// Declares a module's typed error: `ErrorKind` as written (with an `Io` and an `Other` kind),
/// `Error` (a [`Error<ErrorKind>`]) and `Result`; `sorted_by F;` names the module's
/// [`Kind::of_cause`].
macro_rules! declare {
    (
        $(#[$meta:meta])*
        pub enum ErrorKind { $($(#[$kind_meta:meta])* $kind:ident),+ $(,)? }
        $(sorted_by $of_cause:path;)?
    ) => {
        /// The result of a call of this module.
        pub type Result<T, E = Error> = std::result::Result<T, E>;

        /// A failure of a call of this module: its [`ErrorKind`] and the whole context chain.
        pub type Error = $crate::error::Error<ErrorKind>;

        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorKind { $($(#[$kind_meta])* $kind),+ }

        impl $crate::error::Kind for ErrorKind {
            const IO: Self = ErrorKind::Io;
            const OTHER: Self = ErrorKind::Other;
            $(
                fn of_cause(cause: &(dyn std::error::Error + 'static)) -> Option<Self> {
                    $of_cause(cause)
                }
            )?
        }
    };
}
pub(crate) use declare;

/// Runs `f` (the body of a public call) and sorts what it fails with into `E`.
pub(crate) fn typed<T, E: From<anyhow::Error>>(
    f: impl FnOnce() -> anyhow::Result<T>,
) -> Result<T, E> {
    f().map_err(E::from)
}
