//! Logging set-up shared by every binary: human-readable lines by default, JSON lines for log collectors.
//!
//! Filtered by `RUST_LOG` (default [`default_filter`]: `info`, without lapin's channel module). Nothing logged
//! anywhere in the crate carries a secret: secrets are [`crate::secret::Secret`]s, which print as `[redacted]`.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::EnvFilter;

/// The log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Human,
    /// One JSON object per line, with the current span's fields (run id, tenant, mailbox, phase, attempt).
    Json,
}

impl std::str::FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.to_ascii_lowercase().as_str() {
            "human" | "text" => Ok(LogFormat::Human),
            "json" => Ok(LogFormat::Json),
            other => Err(format!(
                "unknown log format {other:?} (expected human or json)"
            )),
        }
    }
}

/// Installs the global subscriber, writing to stderr. Calling it twice is harmless.
pub fn init(format: LogFormat) {
    init_with_writer(format, std::io::stderr);
}

/// [`init`] with another writer: the producer's, which clears its progress bars around each line so log lines
/// and bars do not garble each other on a terminal.
pub fn init_with_writer<W>(format: LogFormat, writer: W)
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| default_filter());
    // `try_init` also forwards the `log` records of dependencies (lapin) when that feature is on.
    let _ = subscriber(format, filter, writer).try_init();
}

/// What is logged when `RUST_LOG` is not set (it replaces all of this): `info`, without lapin's channel module. lapin
/// logs every channel the broker closes at ERROR, including the answers this code expects and handles: a lease held
/// elsewhere (RESOURCE_LOCKED, on every poll of a busy shared mailbox's leases) and a passive declare of a queue
/// that is not there (NOT_FOUND, in `status`). An operator's alert on ERROR lines would fire on a healthy fleet; what
/// does go wrong on a channel reaches the code as the operation's error and is logged there with its context.
pub fn default_filter() -> EnvFilter {
    EnvFilter::new("info,lapin::channel=off")
}

/// The subscriber [`init`] installs, writing to `writer`: built apart so tests can capture the exact lines an
/// operator's log collector would see (e.g. to check that every job line carries its span fields).
pub fn subscriber<W>(
    format: LogFormat,
    filter: EnvFilter,
    writer: W,
) -> Box<dyn tracing::Subscriber + Send + Sync>
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // Colours only for a person at a terminal: escape codes in CI logs and collected files are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(writer);
    match format {
        LogFormat::Human => Box::new(builder.finish()),
        // The current span's fields are flattened into a `span` object on every line, so `kubectl logs | jq`
        // can select one job's lines by run id, tenant, mailbox, phase or attempt.
        LogFormat::Json => Box::new(
            builder
                .json()
                .flatten_event(true)
                .with_current_span(true)
                .with_span_list(false)
                .finish(),
        ),
    }
}

/// A log writer that keeps what it is given, for tests that read the log lines back (what an operator's collector
/// would see). Clones share one buffer: hand one to the subscriber, read the other.
#[derive(Debug, Clone, Default)]
pub struct CapturedLog(Arc<Mutex<Vec<u8>>>);

impl CapturedLog {
    /// Everything written so far, as text.
    pub fn text(&self) -> String {
        let bytes = self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        String::from_utf8_lossy(&bytes).into_owned()
    }

    /// Forgets everything written so far (a capture installed once, read by several callers in turn).
    pub fn clear(&self) {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clear();
    }
}

impl std::io::Write for CapturedLog {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for CapturedLog {
    type Writer = CapturedLog;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// `error` with its causes, `context: cause: cause`, for a log field or the producer's final error. An error whose
/// message is its context alone (`MqError::Amqp`: "declaring queue …", the broker's reason in its source) would
/// otherwise log without the reason; `anyhow`'s `{:#}` lists the causes too, but repeats one an error's own message
/// already ends with (lapin's do).
pub fn with_causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message: said once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::{default_filter, subscriber, with_causes, CapturedLog, LogFormat};

    /// Failed with the default filter at plain `info`: the lease refusal lapin logs at ERROR was written.
    #[test]
    fn by_default_a_channel_the_broker_closed_is_not_an_error_line_and_everything_else_is_kept() {
        let captured = CapturedLog::default();
        let subscriber = subscriber(LogFormat::Human, default_filter(), captured.clone());
        tracing::subscriber::with_default(subscriber, || {
            tracing::error!(target: "lapin::channel", "Channel closed: RESOURCE_LOCKED - cannot obtain exclusive access");
            tracing::error!(target: "lapin::io_loop", "error doing IO");
            tracing::warn!(target: "worker::consumer", "the broker connection was lost; reconnecting");
            tracing::info!(target: "producer::orchestrate", "phase 1 complete; starting phase 2");
            tracing::debug!(target: "producer::orchestrate", "a debug line");
        });
        let text = captured.text();
        assert!(!text.contains("RESOURCE_LOCKED"), "{text}");
        for kept in ["error doing IO", "reconnecting", "starting phase 2"] {
            assert!(text.contains(kept), "{kept:?} missing from {text}");
        }
        assert!(!text.contains("a debug line"), "{text}");
    }

    #[derive(Debug, thiserror::Error)]
    #[error("{context}")]
    struct Contextual {
        context: String,
        #[source]
        source: std::io::Error,
    }

    #[derive(Debug, thiserror::Error)]
    #[error("outer: {0}")]
    struct Repeating(#[source] std::io::Error);

    #[test]
    fn a_context_only_error_logs_with_its_causes_each_once() {
        let io = || std::io::Error::other("PRECONDITION_FAILED - inequivalent arg");
        let contextual = Contextual {
            context: "declaring queue cm.phase1".into(),
            source: io(),
        };
        assert_eq!(
            with_causes(&contextual),
            "declaring queue cm.phase1: PRECONDITION_FAILED - inequivalent arg"
        );
        assert_eq!(
            with_causes(&Repeating(io())),
            "outer: PRECONDITION_FAILED - inequivalent arg",
            "a cause the message already ends with is not repeated"
        );
        assert_eq!(with_causes(&io()), "PRECONDITION_FAILED - inequivalent arg");
    }
}
