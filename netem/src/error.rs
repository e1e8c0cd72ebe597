//! The crate's error type: what failed, and what the caller can do about it.

use std::io;
use std::net::SocketAddr;

/// Errors from building, starting or controlling an emulated link.
#[derive(Debug, thiserror::Error)]
pub enum NetemError {
    /// A link parameter is out of range (names the parameter).
    #[error("invalid link parameter `{field}`: {reason}")]
    InvalidParam { field: String, reason: String },

    /// A command-line value could not be parsed (names the flag).
    #[error("invalid value {value:?} for {flag}: {reason}")]
    InvalidArg {
        flag: String,
        value: String,
        reason: String,
    },

    /// A socket could not be bound.
    #[error(
        "cannot bind UDP socket on {addr}: {source} (is the address local and the port free?)"
    )]
    Bind {
        addr: SocketAddr,
        #[source]
        source: io::Error,
    },

    /// Any other I/O failure, with what was being done.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// Setting up the TUN link (devices, namespaces, addresses) failed.
    #[error("TUN link setup failed: {0}")]
    Tun(String),

    /// The control endpoint answered with an error or could not be reached.
    #[error("control endpoint: {0}")]
    Control(String),
}

impl NetemError {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        NetemError::Io {
            context: context.into(),
            source,
        }
    }

    pub(crate) fn param(field: &str, reason: impl Into<String>) -> Self {
        NetemError::InvalidParam {
            field: field.to_string(),
            reason: reason.into(),
        }
    }
}
