//! The typed error every runtime call returns, and the one place that turns
//! bollard's errors into it. Callers (the executor) branch on the variant:
//! `Unavailable` and `Timeout` mean "try again later", `NotFound` means the
//! container is gone, `Conflict` means a container with that name already
//! exists (adopt or remove it), `ImageUnavailable` is a task-level failure the
//! user must fix, and `Engine` is anything else the engine refused.

use std::time::Duration;

/// An operating error from the Docker engine or the connection to it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuntimeError {
    /// The engine could not be reached (socket missing, connection refused or
    /// reset, unsupported `DOCKER_HOST`, API version the engine will not serve).
    #[error("docker engine unavailable: {0}")]
    Unavailable(String),
    /// The container (or other object) does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The image is not present and could not be pulled.
    #[error("image {image} unavailable: {cause}")]
    ImageUnavailable {
        /// The image reference as the caller gave it.
        image: String,
        /// The engine's own message.
        cause: String,
    },
    /// The request conflicts with the engine's state, e.g. the container name
    /// is already in use.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The call did not complete within its bound.
    #[error("docker {op} timed out after {after:?}")]
    Timeout {
        /// Which call timed out.
        op: &'static str,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// Any other refusal or malformed answer from the engine.
    #[error("docker engine error: {0}")]
    Engine(String),
}

/// Joins an error's message with its sources, so that hyper's terse
/// "client error (Connect)" carries the underlying io error too.
fn chain(err: &dyn std::error::Error) -> String {
    let mut out = err.to_string();
    let mut source = err.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = inner.source();
    }
    out
}

impl From<bollard::errors::Error> for RuntimeError {
    fn from(err: bollard::errors::Error) -> Self {
        use bollard::errors::Error as B;
        match err {
            B::DockerResponseServerError {
                status_code,
                message,
            } => match status_code {
                404 => RuntimeError::NotFound(message),
                409 => RuntimeError::Conflict(message),
                _ => RuntimeError::Engine(format!("status {status_code}: {message}")),
            },
            B::RequestTimeoutError => RuntimeError::Timeout {
                op: "request",
                after: crate::runtime::BOLLARD_TIMEOUT,
            },
            ref e @ (B::HyperLegacyError { .. }
            | B::HyperResponseError { .. }
            | B::IOError { .. }
            | B::SocketNotFoundError(_)
            | B::UnsupportedURISchemeError { .. }) => RuntimeError::Unavailable(chain(e)),
            other => RuntimeError::Engine(chain(&other)),
        }
    }
}

impl RuntimeError {
    /// True for errors after which the same call may succeed later without
    /// any change by the caller (engine down or slow).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            RuntimeError::Unavailable(_) | RuntimeError::Timeout { .. }
        )
    }
}
