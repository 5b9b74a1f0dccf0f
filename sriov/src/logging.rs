//! Logging of the long-running programs (the node daemon, the node-state sidecar): `tracing`
//! to stderr, as text or JSON lines; and [`Escaping`], through which every log line of ours (the
//! CNI plugin's too) is written.
//!
//! Logged values come from tenants (network configs, CNI_ARGS), kubelet and sysfs. A value with a
//! newline could forge a whole log line (or, in a log file read by something else, a line of
//! another format); an escape sequence could rewrite a terminal. So every control character of a
//! line is written escaped (`\n`, `\u{1b}`); only the newline ending the line stays.
//!
//! `RUST_LOG` filters with `target=level` directives (default `info`). It is parsed as
//! [`Targets`], not `EnvFilter`: no span-field regexes, which keeps a regex engine out of the
//! daemon (and out of its resident memory).

use std::borrow::Cow;
use std::io::{self, IsTerminal, Write};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
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
                    .with_writer(Escaping(std::io::stderr)),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_writer(Escaping(std::io::stderr)),
            )
            .try_init(),
    };
}

/// `s` with every control character (C0, DEL, C1, Unicode line and paragraph separators)
/// written as an escape: `\n`, `\r`, `\t`, `\u{1b}`. Plain text comes back borrowed.
pub fn escape(s: &str) -> Cow<'_, str> {
    let needs = |c: char| c.is_control() || c == '\u{2028}' || c == '\u{2029}';
    if !s.chars().any(needs) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if needs(c) => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// A [`MakeWriter`] whose writers escape control characters in each log line ([`escape`]),
/// keeping the line's final newline. `tracing-subscriber` formats an event completely, then
/// writes it with one `write_all`, so each `write` here sees whole lines.
#[derive(Debug, Clone)]
pub struct Escaping<M>(pub M);

/// The writer [`Escaping`] hands out.
#[derive(Debug)]
pub struct EscapingWriter<W>(W);

impl<'a, M: MakeWriter<'a>> MakeWriter<'a> for Escaping<M> {
    type Writer = EscapingWriter<M::Writer>;

    fn make_writer(&'a self) -> Self::Writer {
        EscapingWriter(self.0.make_writer())
    }
}

impl<W: Write> Write for EscapingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let (body, end) = match text.strip_suffix('\n') {
            Some(body) => (body, "\n"),
            None => (&*text, ""),
        };
        let line = escape(body);
        if matches!(line, Cow::Borrowed(_)) && matches!(text, Cow::Borrowed(_)) {
            self.0.write_all(buf)?;
        } else {
            self.0.write_all(format!("{line}{end}").as_bytes())?;
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(escape("plain value"), "plain value");
        assert!(matches!(escape("plain"), Cow::Borrowed(_)));
        assert_eq!(
            escape("a\n* * * * * root x\r\t\u{1b}[2J\u{85}\u{2028}"),
            "a\\n* * * * * root x\\r\\t\\u{1b}[2J\\u{85}\\u{2028}"
        );
    }

    /// A buffer shared with the subscriber.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_logged_value_never_starts_a_new_line() {
        let buf = Buffer::default();
        let out = buf.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(Escaping(move || buf.clone()))
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let evil = "x\n* * * * * root /tmp/evil\n";
            tracing::info!("deviceID {evil} refused");
            tracing::warn!(value = evil, "second");
        });
        let text = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 2, "{text}");
        assert!(lines[0].ends_with("deviceID x\\n* * * * * root /tmp/evil\\n refused"));
        assert!(!text.lines().any(|l| l.starts_with("* * * * *")));
    }
}
