//! Log lines on stderr in the gateway's own shape: one JSON object per line with `event`,
//! `level`, `timestamp` (ISO 8601, UTC) and the event's fields, so one log pipeline reads both
//! processes. String values are cut at 200 characters, as the gateway cuts them: client input
//! (model names, versions) cannot blow up a line.
//!
//! The level and format are set once at start ([`init`]) and only read afterwards. A write that
//! fails (stderr closed) is dropped: logging never takes the data plane down.

use std::io::Write;
use std::sync::OnceLock;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub enum Level {
    Debug,
    Info,
    Warning,
    Error,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Json,
    Console,
}

const MAX_VALUE_CHARS: usize = 200;

struct Settings {
    level: Level,
    format: Format,
}

static SETTINGS: OnceLock<Settings> = OnceLock::new();

/// Set the level and format; later calls change nothing.
pub fn init(level: Level, format: Format) {
    let _ = SETTINGS.set(Settings { level, format });
}

fn settings() -> &'static Settings {
    SETTINGS.get_or_init(|| Settings {
        level: Level::Info,
        format: Format::Json,
    })
}

/// Whether lines of `level` are written (check before building costly fields).
pub fn enabled(level: Level) -> bool {
    level >= settings().level
}

pub fn debug(event: &str, fields: &[(&str, &str)]) {
    write(Level::Debug, event, fields);
}

pub fn info(event: &str, fields: &[(&str, &str)]) {
    write(Level::Info, event, fields);
}

pub fn warning(event: &str, fields: &[(&str, &str)]) {
    write(Level::Warning, event, fields);
}

pub fn error(event: &str, fields: &[(&str, &str)]) {
    write(Level::Error, event, fields);
}

fn level_name(level: Level) -> &'static str {
    match level {
        Level::Debug => "debug",
        Level::Info => "info",
        Level::Warning => "warning",
        Level::Error => "error",
    }
}

fn truncated(value: &str) -> std::borrow::Cow<'_, str> {
    match value.char_indices().nth(MAX_VALUE_CHARS) {
        None => std::borrow::Cow::Borrowed(value),
        Some((cut, _)) => std::borrow::Cow::Owned(format!(
            "{}...[truncated, {} chars]",
            &value[..cut],
            value.chars().count()
        )),
    }
}

/// The line as written, without its newline.
pub fn render(level: Level, format: Format, timestamp: &str, event: &str, fields: &[(&str, &str)]) -> String {
    match format {
        Format::Json => {
            let mut line = serde_json::Map::new();
            line.insert("event".into(), truncated(event).into_owned().into());
            line.insert("level".into(), level_name(level).into());
            line.insert("timestamp".into(), timestamp.into());
            line.insert("process".into(), "tgw-edge".into());
            for (key, value) in fields {
                line.insert((*key).into(), truncated(value).into_owned().into());
            }
            serde_json::Value::Object(line).to_string()
        }
        Format::Console => {
            let mut line = format!(
                "{timestamp} [{:<7}] {:<30} process=tgw-edge",
                level_name(level),
                truncated(event)
            );
            for (key, value) in fields {
                line.push_str(&format!(" {key}={}", truncated(value)));
            }
            line
        }
    }
}

fn write(level: Level, event: &str, fields: &[(&str, &str)]) {
    let settings = settings();
    if level < settings.level {
        return;
    }
    let timestamp = humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string();
    let line = render(level, settings.format, &timestamp, event, fields);
    let mut stderr = std::io::stderr().lock();
    let _ = writeln!(stderr, "{line}");
}

#[cfg(test)]
mod tests {
    use super::{render, Format, Level};

    #[test]
    fn json_lines_have_the_gateway_shape_and_bounded_values() {
        let long = "x".repeat(500);
        let line = render(
            Level::Warning,
            Format::Json,
            "2026-01-01T00:00:00.000000Z",
            "snapshot_refused",
            &[("reason", &long)],
        );
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["event"], "snapshot_refused");
        assert_eq!(value["level"], "warning");
        assert_eq!(value["timestamp"], "2026-01-01T00:00:00.000000Z");
        let reason = value["reason"].as_str().unwrap();
        assert!(reason.starts_with(&"x".repeat(200)) && reason.ends_with("[truncated, 500 chars]"));
    }

    #[test]
    fn console_lines_are_readable() {
        let line = render(Level::Info, Format::Console, "t", "edge_started", &[("port", "8001")]);
        assert!(line.contains("edge_started") && line.contains("port=8001"), "{line}");
    }
}
