//! Routes the SDK's `tracing` events (and `log` records of its dependencies)
//! to the app, which hands them to logcat or os_log.
//!
//! What reaches the sink is filtered here, before the app sees it: a
//! phone's logs are read by whoever holds the phone, and at TRACE the
//! HTTP and WebSocket libraries log request headers (the bearer token)
//! and whole frames (members' names and phones). Only the SDK's own
//! modules log below WARN; every dependency is held to WARN and above
//! whatever level the app asks for, and fields that name a secret are
//! redacted.

use std::fmt::Write as _;
use std::sync::Arc;

use tracing::field::{Field, Visit};
use tracing_subscriber::filter::LevelFilter;
use tracing_subscriber::layer::{Context, SubscriberExt as _};
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{Layer, registry};

use crate::DoorstepError;

/// How severe a log line is; also the most verbose level a sink receives.
#[derive(uniffi::Enum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for tracing::Level {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Error => tracing::Level::ERROR,
            LogLevel::Warn => tracing::Level::WARN,
            LogLevel::Info => tracing::Level::INFO,
            LogLevel::Debug => tracing::Level::DEBUG,
            LogLevel::Trace => tracing::Level::TRACE,
        }
    }
}

impl From<&tracing::Level> for LogLevel {
    fn from(level: &tracing::Level) -> Self {
        match *level {
            tracing::Level::ERROR => LogLevel::Error,
            tracing::Level::WARN => LogLevel::Warn,
            tracing::Level::INFO => LogLevel::Info,
            tracing::Level::DEBUG => LogLevel::Debug,
            tracing::Level::TRACE => LogLevel::Trace,
        }
    }
}

/// Receives the SDK's log lines (logcat on Android, os_log on iOS).
///
/// Called on whichever thread logged, often several at once, so an
/// implementation must be thread-safe and quick; it must not call back
/// into the SDK.
#[uniffi::export(foreign)]
pub trait LogSink: Send + Sync {
    /// `target` names the module that logged (`doorstep_client::sync`,
    /// `sqlx::query`); `message` is the text and then its fields as `key=value`.
    fn log(&self, level: LogLevel, target: String, message: String);
}

/// Sends every log line at `max_level` or more severe to `sink`, for the
/// rest of the process. Once per process: tracing has one global
/// subscriber, so a second call fails (and the first sink stays).
#[uniffi::export]
pub fn install_log_sink(sink: Arc<dyn LogSink>, max_level: LogLevel) -> Result<(), DoorstepError> {
    let filter = LevelFilter::from_level(max_level.into());
    registry()
        .with(SinkLayer { sink }.with_filter(filter))
        .try_init()
        .map_err(|e| DoorstepError::Invalid {
            field: "sink".into(),
            problem: format!("a log sink is already installed: {e}"),
        })
}

struct SinkLayer {
    sink: Arc<dyn LogSink>,
}

/// Modules whose DEBUG and TRACE lines may reach the app: the SDK's own,
/// which log ids and counts, never tokens or record contents.
const OWN_TARGETS: &[&str] = &["doorstep_client", "doorstep_ffi", "doorstep_protocol"];

/// Field names whose values never reach the sink.
const SECRET_FIELDS: &[&str] = &["authorization", "token", "password", "key", "store_key"];

/// Whether a line of `target` at `level` may reach the app.
fn forwarded(target: &str, level: &tracing::Level) -> bool {
    *level <= tracing::Level::WARN
        || OWN_TARGETS
            .iter()
            .any(|own| target == *own || target.starts_with(&format!("{own}::")))
}

impl<S: tracing::Subscriber> Layer<S> for SinkLayer {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        let metadata = event.metadata();
        // A `log` record's real target is a field; check the cheap one
        // first, then the record's own once it is read.
        if !forwarded(metadata.target(), metadata.level()) && metadata.target() != "log" {
            return;
        }
        let mut line = Line::default();
        event.record(&mut line);
        let target = line
            .log_target
            .unwrap_or_else(|| metadata.target().to_owned());
        if !forwarded(&target, metadata.level()) {
            return;
        }
        let mut message = line.message;
        message.push_str(&line.fields);
        self.sink.log(metadata.level().into(), target, message);
    }
}

/// One event as text: its message, then its other fields.
#[derive(Default)]
struct Line {
    message: String,
    fields: String,
    /// A `log` record's own target; tracing-log reports them all under `log`.
    log_target: Option<String>,
}

impl Visit for Line {
    fn record_str(&mut self, field: &Field, value: &str) {
        match field.name() {
            "message" => self.message.push_str(value),
            "log.target" => self.log_target = Some(value.to_owned()),
            name if name.starts_with("log.") => {}
            name if is_secret(name) => {
                let _ = write!(self.fields, " {name}=<redacted>");
            }
            name => {
                let _ = write!(self.fields, " {name}={value}");
            }
        }
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "message" => {
                let _ = write!(self.message, "{value:?}");
            }
            "log.target" => self.log_target = Some(format!("{value:?}")),
            name if name.starts_with("log.") => {}
            name if is_secret(name) => {
                let _ = write!(self.fields, " {name}=<redacted>");
            }
            name => {
                let _ = write!(self.fields, " {name}={value:?}");
            }
        }
    }
}

fn is_secret(field: &str) -> bool {
    let field = field.to_ascii_lowercase();
    SECRET_FIELDS.iter().any(|secret| field.contains(secret))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[derive(Default)]
    struct Collect(Mutex<Vec<(LogLevel, String, String)>>);

    impl LogSink for Collect {
        fn log(&self, level: LogLevel, target: String, message: String) {
            self.0.lock().expect("lines").push((level, target, message));
        }
    }

    #[test]
    fn dependencies_reach_the_sink_only_at_warn_and_secrets_never() {
        let sink = Arc::new(Collect::default());
        let subscriber =
            registry().with(SinkLayer { sink: sink.clone() }.with_filter(LevelFilter::TRACE));
        tracing::subscriber::with_default(subscriber, || {
            tracing::trace!(target: "tungstenite::protocol", "received frame: 王秀兰 13800138000");
            tracing::trace!(target: "hyper::proto::h1", authorization = "Bearer abc", "headers");
            tracing::debug!(target: "reqwest::connect", "connecting");
            tracing::warn!(target: "rustls::conn", "a warning a developer needs");
            tracing::trace!(target: "doorstep_client::sync", authorization = "Bearer abc", token = "abc", document = "roster", "sent");
        });
        let lines = sink.0.lock().expect("lines");
        let text = format!("{lines:?}");
        assert!(
            !text.contains("王秀兰") && !text.contains("13800138000"),
            "{text}"
        );
        assert!(!text.contains("abc"), "{text}");
        assert_eq!(lines.len(), 2, "{text}");
        assert_eq!(lines[0].1, "rustls::conn");
        assert_eq!(lines[1].1, "doorstep_client::sync");
        assert!(lines[1].2.contains("document=roster"), "{text}");
        assert!(lines[1].2.contains("authorization=<redacted>"), "{text}");
    }
}
