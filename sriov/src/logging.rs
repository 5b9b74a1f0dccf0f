//! Logging of the long-running programs (the node daemon, the node-state sidecar): `tracing`
//! to stderr, as text or JSON lines.
//!
//! `RUST_LOG` filters with `target=level` directives (default `info`). It is parsed as
//! [`Targets`], not `EnvFilter`: no span-field regexes, which keeps a regex engine out of the
//! daemon (and out of its resident memory).

use std::io::IsTerminal;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The filter from `RUST_LOG`; a malformed value falls back to `info` (and says so).
fn filter(program: &str) -> Targets {
    match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => v.parse().unwrap_or_else(|e| {
            eprintln!("{program}: ignoring RUST_LOG={v:?}: {e}");
            Targets::new().with_default(LevelFilter::INFO)
        }),
        _ => Targets::new().with_default(LevelFilter::INFO),
    }
}

/// Installs the global subscriber for `program` (named in warnings about `RUST_LOG`); a second
/// call (tests) is a no-op.
pub fn init(program: &str, format: LogFormat) {
    let registry = tracing_subscriber::registry().with(filter(program));
    let _ = match format {
        // Colours only on a terminal: container logs and files get plain text.
        LogFormat::Text => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_writer(std::io::stderr),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(std::io::stderr),
            )
            .try_init(),
    };
}
