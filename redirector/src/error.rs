//! The agent library's errors: each says what failed, with which value, and what to do.

use std::path::PathBuf;

/// Errors of the agent library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid configuration (flag, environment variable, file or cgroup path).
    #[error("invalid configuration: {what}")]
    Config { what: String },
    /// The host lacks something the programs need.
    #[error("{what}")]
    Host { what: String },
    /// Loading the embedded object or a program into the kernel failed.
    #[error(
        "loading {what} failed: {source}; run `lattice-redirector doctor` for the host checks"
    )]
    Load {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// Attaching a program to the cgroup failed.
    #[error("attaching {program} to cgroup {cgroup} failed: {source}")]
    Attach {
        program: String,
        cgroup: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A bpffs pin could not be created, opened or removed.
    #[error("pin {path}: {what}")]
    Pin { path: PathBuf, what: String },
    /// A map operation failed.
    #[error("map {map}: {what}")]
    Map { map: &'static str, what: String },
    /// Nothing is installed where the command looked.
    #[error("nothing is installed under {0}: start the agent (`lattice-redirector run`) first")]
    NotInstalled(PathBuf),
    /// I/O on a path.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// An error and its causes on one line, joined by ": ", each cause once: the messages of
/// this crate's errors already include their source, which is then not repeated.
pub fn chain(err: &dyn std::error::Error) -> String {
    let mut line = err.to_string();
    for cause in std::iter::successors(err.source(), |&e| e.source()).take(32) {
        let text = cause.to_string();
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        line.push_str(": ");
        line.push_str(&text);
    }
    line.replace(['\r', '\n'], " ")
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Wraps an I/O error with its path.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> Error {
        let path = path.into();
        move |source| Error::Io { path, source }
    }

    /// Wraps a map error.
    pub fn map(map: &'static str) -> impl FnOnce(aya::maps::MapError) -> Error {
        move |e| Error::Map {
            map,
            what: e.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_cause_is_said_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = Error::io("/etc/x")(io);
        // Display already says the source: chain adds nothing.
        assert_eq!(chain(&e), "/etc/x: no such file");
        let e = Error::Load {
            what: "program le_connect4".into(),
            source: Box::new(std::io::Error::other("verifier said no")),
        };
        let line = chain(&e);
        assert_eq!(line.matches("verifier said no").count(), 1, "{line}");
    }
}
