//! What can go wrong, in terms an app can act on.

/// Errors from the SDK.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Input refused before anything was written. `field` names the input
    /// at fault as the Rust field is called (`aid_cash`, `follow_up.due`),
    /// or what was asked for when no field is to blame (`device`).
    #[error("invalid {field}: {problem}")]
    Invalid { field: String, problem: String },
    /// A conflict changed since the app read it (another device's value
    /// arrived, or it was resolved elsewhere): nothing was written. Read
    /// [`Client::conflicts`](crate::Client::conflicts) again and show the
    /// user what the field holds now.
    #[error("the conflict on {field} changed since it was read; nothing was written")]
    ConflictChanged {
        field: String,
        /// The values the field holds now.
        now: Vec<crate::ConflictValue>,
    },
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
    /// Another process (or another open with a different configuration)
    /// holds this data directory: two owners would corrupt it.
    #[error("the data directory {0} is open elsewhere")]
    AlreadyOpen(String),
    /// The store key does not open the store (or the file is not a store).
    #[error("the store key does not open this device's store")]
    WrongKey,
    /// The server does not know this device's token: it may have been
    /// restored from a backup, or this is the wrong server. Not a
    /// revocation: unsynced edits stay, and can be exported.
    #[error("the server does not recognise this device: {0}")]
    UnknownDevice(String),
    /// The enrollment code waits for the branch secretary's approval; it is
    /// not spent: enroll with it again once approved.
    #[error("the enrollment code waits for the branch secretary's approval")]
    PendingApproval,
    /// The store was written by a newer version of the SDK (the app was
    /// downgraded): its schema has step `version`, which this version does
    /// not know. Nothing was changed; update the app, do not wipe (the
    /// store may hold unsynced edits).
    #[error(
        "this device's store was written by a newer version of the app (schema step {version}); update the app"
    )]
    NewerStore { version: i64 },
    /// The client was closed (or re-keyed, which closes it): open the
    /// directory again for a new one.
    #[error("this client was closed; open the data directory again")]
    Closed,
    /// `rekey` rewrote the store under the new key, then could not open it
    /// again (another process took the directory, a full disk): keep the
    /// new key, drop the old one, and open the directory with the new key.
    #[error("the store is now under the new key but did not reopen: {0}; open it with the new key")]
    RekeyedNotReopened(String),
    /// The store is plain SQLite, as an SDK from before encryption wrote
    /// it: no key opens it. Migrate it (sync what it holds with the old
    /// app version, or export it there) and start a new encrypted store.
    #[error(
        "this device's store is unencrypted (written by an SDK before encryption); migrate it: sync or export with the old app, then wipe"
    )]
    UnencryptedStore,
    /// The call was cancelled before it finished; what it completed stays.
    #[error("cancelled")]
    Cancelled,
}

impl ClientError {
    /// Input refused before anything was written, naming the field.
    pub(crate) fn invalid(field: impl Into<String>, problem: impl std::fmt::Display) -> Self {
        ClientError::Invalid {
            field: field.into(),
            problem: problem.to_string(),
        }
    }
}

impl From<sqlx::Error> for ClientError {
    fn from(e: sqlx::Error) -> Self {
        if matches!(e, sqlx::Error::PoolClosed) {
            // Only `close` (or a re-key) closes the pool.
            return ClientError::Closed;
        }
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
        // reqwest's own message ("error sending request") hides the cause
        // (a certificate, a refused connection): keep the whole chain.
        let mut message = e.to_string();
        let mut source = std::error::Error::source(&e);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        ClientError::Network(message)
    }
}
