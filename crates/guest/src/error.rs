//! The one error type of the guest crate.

use std::io;
use std::path::PathBuf;

/// Everything that can go wrong while fetching, verifying, unpacking or
/// building guest assets. Each variant names what it was working on.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file system or process operation failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// The host's apt configuration names no Debian archive we can use.
    #[error(
        "no Debian archive found in the host's apt configuration ({searched}); \
         add one there or set VIRTKIT_DEBIAN_MIRROR to the archive's URI"
    )]
    NoMirror { searched: String },
    /// An apt sources file could not be parsed.
    #[error("{file}:{line}: {message}")]
    Sources {
        file: PathBuf,
        line: usize,
        message: String,
    },
    /// An HTTP transfer failed.
    #[error("downloading {url}: {message}")]
    Http { url: String, message: String },
    /// Downloaded or cached bytes do not have the SHA256 the signed index promises.
    #[error("{what}: SHA256 mismatch (expected {expected}, got {actual})")]
    HashMismatch {
        what: String,
        expected: String,
        actual: String,
    },
    /// Downloaded bytes do not have the size the signed index promises.
    #[error("{what}: size mismatch (expected {expected} bytes, got {actual})")]
    SizeMismatch {
        what: String,
        expected: u64,
        actual: u64,
    },
    /// The OpenPGP signature of a Release file did not verify.
    #[error("signature of {what} does not verify against {keyring}: {message}")]
    Signature {
        what: String,
        keyring: PathBuf,
        message: String,
    },
    /// The keyring lacks the key that signed the Release file.
    #[error(
        "the keyring {keyring} has no key for {what} (signed by key {keys}); \
         the host's debian-archive-keyring is too old for this suite: \
         install a newer debian-archive-keyring package"
    )]
    MissingKey {
        what: String,
        keyring: PathBuf,
        keys: String,
    },
    /// A file had the wrong format (corrupt archive, bad index, bad ELF...).
    #[error("{what}: {message}")]
    Format { what: String, message: String },
    /// The wanted package is not in the index.
    #[error("package {name} not found in Debian {suite} main for {arch}")]
    PackageNotFound {
        name: String,
        suite: String,
        arch: String,
    },
    /// A request that cannot be satisfied as asked.
    #[error("{0}")]
    Invalid(String),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn format(what: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Format {
            what: what.into(),
            message: message.into(),
        }
    }
}

/// Adds a context string to `io::Result`s.
pub(crate) trait IoContext<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> IoContext<T> for io::Result<T> {
    fn ctx(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error::io(context(), e))
    }
}
