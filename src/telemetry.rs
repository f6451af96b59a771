//! Log set-up in one place. Under systemd (`$JOURNAL_STREAM` names this process's stderr),
//! events go to journald over its native protocol with their fields as journal fields
//! (`EVENT_ID`, `TICKER`, `STATUS`, `LAG_MS`, `CODE`, ...), so that
//! `journalctl -u pyron-worker EVENT_ID=<id>` finds an alert's story. Otherwise, lines on
//! stdout: human-readable, or JSON with `PYRON_LOG_FORMAT=json`. `PYRON_LOG` filters both.
//!
//! The line each alert leaves in each process when all goes well (accepted, processed,
//! delivered) is a debug line of its own target, `ALERTS`: the default `info` logs what
//! went wrong or changed, and `PYRON_LOG=info,pyron::alerts=debug` adds every alert's
//! story. At thousands of alerts a second, those lines cost more CPU than the rest of a
//! process's logging together, and each alert's story is in MongoDB already.

use std::os::{fd::AsFd, unix::fs::MetadataExt};

use tracing_journald::{Priority, PriorityMappings};
use tracing_subscriber::{EnvFilter, fmt, layer::SubscriberExt, util::SubscriberInitExt};

use crate::config::{Config, LogFormat};

/// The target of the line each alert leaves when all goes well, at debug.
pub const ALERTS: &str = "pyron::alerts";

/// Where the log goes, as chosen at start-up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sink {
    Journald,
    Stdout,
}

/// Sets up logging for the binary `identifier` (journald's `SYSLOG_IDENTIFIER`).
pub fn init(config: &Config, identifier: &str) -> Sink {
    let filter =
        || EnvFilter::try_new(&config.log.filter).unwrap_or_else(|_| EnvFilter::new("info"));
    if stderr_is_journal() {
        match tracing_journald::layer() {
            Ok(layer) => {
                // syslog's meaning of the levels: info is 6, not tracing-journald's 5
                // (notice), so `journalctl -p info` and `-p notice` mean what they say.
                let layer = layer
                    .with_field_prefix(None)
                    .with_syslog_identifier(identifier.to_owned())
                    .with_priority_mappings(PriorityMappings {
                        error: Priority::Error,
                        warn: Priority::Warning,
                        info: Priority::Informational,
                        debug: Priority::Debug,
                        trace: Priority::Debug,
                    });
                tracing_subscriber::registry()
                    .with(filter())
                    .with(layer)
                    .init();
                return Sink::Journald;
            }
            Err(err) => eprintln!("{identifier}: journald unreachable ({err}); logging to stdout"),
        }
    }
    let builder = fmt().with_env_filter(filter()).with_writer(std::io::stdout);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
    Sink::Stdout
}

/// True when systemd connected stderr to the journal: `$JOURNAL_STREAM` is
/// `<device>:<inode>` of the stream stderr is.
fn stderr_is_journal() -> bool {
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let Ok(stderr) = std::io::stderr().as_fd().try_clone_to_owned() else {
        return false;
    };
    let Ok(meta) = std::fs::File::from(stderr).metadata() else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}
