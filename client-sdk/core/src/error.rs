//! What can go wrong, in terms an app can act on.

/// Errors from the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Input refused before anything was written.
    #[error("invalid input: {0}")]
    Invalid(String),
    /// A record the input refers to does not exist on this device.
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The device has no credentials yet.
    #[error("this device is not enrolled")]
    NotEnrolled,
    /// The server revoked this device: stop syncing; the app may wipe data.
    #[error("this device was revoked: {0}")]
    Revoked(String),
    /// The server could not be reached or the connection broke; retrying helps.
    #[error("network: {0}")]
    Network(String),
    /// The server refused something (an enrollment code, a change).
    #[error("the server refused: {0}")]
    Refused(String),
    /// The local store failed (disk full, corrupt file).
    #[error("local storage: {0}")]
    Storage(String),
}

impl From<sqlx::Error> for ClientError {
    fn from(e: sqlx::Error) -> Self {
        ClientError::Storage(e.to_string())
    }
}

impl From<automerge::AutomergeError> for ClientError {
    fn from(e: automerge::AutomergeError) -> Self {
        ClientError::Storage(format!("document: {e}"))
    }
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        ClientError::Network(e.to_string())
    }
}
