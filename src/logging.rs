//! The process's log: text or one JSON object per line (`logging.format`), and records
//! that carry a JSON document (the debug action's triggered event) as a JSON value in
//! JSON logs, not as an escaped string: tracing's JSON format writes every field as a
//! string or a number, so such records are written here, in the same shape.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::config::LogFormat;

static JSON: AtomicBool = AtomicBool::new(false);

/// Without `RUST_LOG`: `info`, but not the TLS verifier's own line per refused
/// certificate (an error per connection, not limited in rate); the job's warning of the
/// failed request or call says it, with the certificate's problem, at a limited rate.
const DEFAULT_FILTER: &str = "info,rustls_platform_verifier=off";

/// Installs the subscriber for `format`, filtered by `RUST_LOG` (default
/// `DEFAULT_FILTER`) with `directive` added.
pub fn init(format: LogFormat, directive: Option<&str>) {
    let mut filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_FILTER));
    if let Some(d) = directive.and_then(|d| d.parse().ok()) {
        filter = filter.add_directive(d);
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Json => {
            JSON.store(true, Ordering::Relaxed);
            builder.json().init()
        }
        // Colours for a terminal only: log files and collectors get plain text.
        LogFormat::Text => builder
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
    }
}

/// Whether the log is JSON.
pub fn is_json() -> bool {
    JSON.load(Ordering::Relaxed)
}

/// Reports the error that ends a run: on standard error as `error: <cause chain>`, or,
/// to a log collector reading JSON, as an ERROR record.
pub fn report_error(e: &anyhow::Error) {
    if is_json() {
        tracing::error!("{e:#}");
    } else {
        eprintln!("error: {e:#}");
    }
}

/// Writes an INFO record in the JSON log's shape: `target`, `message`, the field
/// `name` = value, and the field `doc_field` holding `doc` (serialized JSON) as a JSON
/// value. For JSON logs only (`is_json`); a text log takes a `tracing` record.
pub fn write_json_record(
    target: &str,
    message: &str,
    name: (&str, &str),
    doc_field: &str,
    doc: &[u8],
) {
    let mut line = Vec::with_capacity(doc.len() + 256);
    line.extend_from_slice(b"{\"timestamp\":\"");
    line.extend_from_slice(rfc3339_now().as_bytes());
    line.extend_from_slice(b"\",\"level\":\"INFO\",\"fields\":{\"message\":");
    // Serializing a &str cannot fail.
    let quoted = |s: &str| serde_json::to_vec(s).unwrap_or_default();
    line.extend_from_slice(&quoted(message));
    line.push(b',');
    line.extend_from_slice(&quoted(name.0));
    line.push(b':');
    line.extend_from_slice(&quoted(name.1));
    line.push(b',');
    line.extend_from_slice(&quoted(doc_field));
    line.push(b':');
    line.extend_from_slice(&one_line(doc));
    line.extend_from_slice(b"},\"target\":");
    line.extend_from_slice(&quoted(target));
    line.extend_from_slice(b"}\n");
    // One write of the whole line, under stderr's lock: lines of workers do not mix.
    let _ = std::io::stderr().lock().write_all(&line);
}

/// `json` (one JSON value) on one line: its line breaks made spaces. In JSON a line
/// break can only be whitespace between tokens (inside a string it is escaped), so the
/// value is the same; such whitespace comes from parameters kept as they arrived (a
/// Profile API's history written with line breaks), and split a record over lines.
pub fn one_line(json: &[u8]) -> std::borrow::Cow<'_, [u8]> {
    if !json.iter().any(|&b| b == b'\n' || b == b'\r') {
        return std::borrow::Cow::Borrowed(json);
    }
    let flat = json
        .iter()
        .map(|&b| if b == b'\n' || b == b'\r' { b' ' } else { b })
        .collect();
    std::borrow::Cow::Owned(flat)
}

/// Now as `2026-12-02T01:31:35.438149Z`, as tracing's JSON log writes its timestamps.
fn rfc3339_now() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    rfc3339(now.as_secs(), now.subsec_micros())
}

/// Seconds since the epoch (UTC) and microseconds as RFC 3339.
fn rfc3339(secs: u64, micros: u32) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{micros:06}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A value with line breaks between its tokens (parameters kept as a Profile API
    /// wrote them) is written on one line and reads as the same value; a line break
    /// escaped inside a string stays escaped. Found by a trial: JSON log records split
    /// over lines.
    #[test]
    fn a_value_with_line_breaks_between_tokens_goes_on_one_line() {
        let spaced = "{\n\t\"a\" :\r\n [1,\n2],\"s\":\"x\\ny\"\r}";
        let flat = one_line(spaced.as_bytes());
        assert!(!flat.contains(&b'\n') && !flat.contains(&b'\r'));
        let value = |b: &[u8]| serde_json::from_slice::<serde_json::Value>(b).unwrap();
        assert_eq!(value(&flat), value(spaced.as_bytes()));
        assert_eq!(value(&flat)["s"], "x\ny");
        let compact = br#"{"a":[1,2]}"#;
        assert!(matches!(one_line(compact), std::borrow::Cow::Borrowed(_)));
    }

    #[test]
    fn timestamps_are_rfc3339_in_utc() {
        assert_eq!(rfc3339(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(rfc3339(951_782_400, 5), "2000-02-29T00:00:00.000005Z");
        assert_eq!(
            rfc3339(1_795_829_495, 438_149),
            "2026-11-28T01:31:35.438149Z"
        );
    }
}
