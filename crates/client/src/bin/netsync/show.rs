//! What the CLI prints: values as plain text (and as JSON values for
//! `-o json`), aligned tables, and colour only when stdout is a terminal
//! (never in a pipe, so scripts read plain text).

use std::io::{IsTerminal, Write};

use netsync_client::gnmi::{TypedValue, typed_value::Value};

use crate::error::CliError;

/// Whether stdout is a terminal (colours and headers are for people).
pub fn is_terminal() -> bool {
    std::io::stdout().is_terminal()
}

/// Writes `text` to stdout. A closed pipe (`netsync watch | head -3`) is not
/// an error worth a message: the reader has what it wanted.
pub fn out(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(e) => Err(CliError::Input(format!("cannot write to stdout: {e}"))),
    }
}

/// A spinner on stderr counting what a long read has received, only when
/// stdout is a terminal (a person waiting); hidden otherwise, so a pipe or a
/// log gets nothing but the result. Clear it before printing the result.
pub fn progress() -> indicatif::ProgressBar {
    if !is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.enable_steady_tick(std::time::Duration::from_millis(120));
    spinner
}

/// `text` in bold, on a terminal.
pub fn bold(text: &str) -> String {
    paint("1", text)
}

/// `text` in the ANSI colour `code` (such as "32", green), on a terminal.
pub fn paint(code: &str, text: &str) -> String {
    if is_terminal() {
        format!("\x1b[{code}m{text}\x1b[0m")
    } else {
        text.to_string()
    }
}

/// Prints `rows` under `headers` in columns two spaces apart (kubectl's
/// layout); the last column is not padded.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> Result<(), CliError> {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>, header: bool| {
        let last = cells.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in cells.into_iter().enumerate() {
            let pad = if i == last {
                0
            } else {
                widths[i] + 2 - cell.chars().count()
            };
            line.push_str(&if header { bold(&cell) } else { cell });
            line.push_str(&" ".repeat(pad));
        }
        // An empty last cell would leave the padding of the one before.
        let mut line = line.trim_end().to_string();
        line.push('\n');
        line
    };
    let mut text = line(headers.iter().map(|h| h.to_string()).collect(), true);
    for row in rows {
        text.push_str(&line(row.clone(), false));
    }
    out(&text)
}

/// A value as plain text: scalars as themselves, a JSON string as its text,
/// other JSON documents as compact JSON; opaque bytes (rare in config) by
/// their length only.
pub fn value_text(value: Option<&TypedValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        None => String::new(),
        Some(Value::StringVal(s) | Value::AsciiVal(s)) => s.clone(),
        Some(Value::IntVal(n)) => n.to_string(),
        Some(Value::UintVal(n)) => n.to_string(),
        Some(Value::BoolVal(b)) => b.to_string(),
        Some(Value::DoubleVal(d)) => d.to_string(),
        #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
        Some(Value::FloatVal(f)) => f.to_string(),
        #[allow(deprecated, reason = "devices still send float_val and decimal_val")]
        Some(Value::DecimalVal(d)) => decimal_text(d.digits, d.precision),
        Some(Value::LeaflistVal(list)) => {
            let items: Vec<String> = list.element.iter().map(|v| value_text(Some(v))).collect();
            format!("[{}]", items.join(", "))
        }
        Some(Value::JsonVal(bytes) | Value::JsonIetfVal(bytes)) => {
            // Compact JSON on one line, whatever spacing the device used.
            match serde_json::from_slice::<serde_json::Value>(bytes) {
                Ok(serde_json::Value::String(s)) => s,
                Ok(json) => json.to_string(),
                Err(_) => String::from_utf8_lossy(bytes).into_owned(),
            }
        }
        Some(Value::BytesVal(bytes) | Value::ProtoBytes(bytes)) => {
            format!("<{} bytes>", bytes.len())
        }
        Some(Value::AnyVal(any)) => format!("<{}>", any.type_url),
    }
}

/// A value as a JSON value, for `-o json` and `-o yaml` of running: numbers
/// and booleans as themselves, JSON documents inline, everything else as
/// its text.
pub fn value_json(value: Option<&TypedValue>) -> serde_json::Value {
    use serde_json::Value as J;
    match value.and_then(|v| v.value.as_ref()) {
        None => J::Null,
        Some(Value::IntVal(n)) => J::from(*n),
        Some(Value::UintVal(n)) => J::from(*n),
        Some(Value::BoolVal(b)) => J::from(*b),
        Some(Value::DoubleVal(d)) => J::from(*d),
        Some(Value::LeaflistVal(list)) => {
            J::Array(list.element.iter().map(|v| value_json(Some(v))).collect())
        }
        Some(Value::JsonVal(bytes) | Value::JsonIetfVal(bytes)) => {
            serde_json::from_slice(bytes).unwrap_or_else(|_| J::from(value_text(value)))
        }
        Some(_) => J::from(value_text(value)),
    }
}

/// A gNMI Decimal64 as text: digits 12345, precision 2 is "123.45".
fn decimal_text(digits: i64, precision: u32) -> String {
    let sign = if digits < 0 { "-" } else { "" };
    let digits = digits.unsigned_abs().to_string();
    let precision = precision as usize;
    if precision == 0 {
        return format!("{sign}{digits}");
    }
    let padded = format!("{digits:0>width$}", width = precision + 1);
    let (whole, fraction) = padded.split_at(padded.len() - precision);
    format!("{sign}{whole}.{fraction}")
}

#[cfg(test)]
mod tests {
    use netsync_client::gnmi;

    use super::*;

    fn typed(value: Value) -> TypedValue {
        gnmi::TypedValue { value: Some(value) }
    }

    #[test]
    fn values_read_as_plain_text() {
        assert_eq!(
            value_text(Some(&typed(Value::StringVal("up".into())))),
            "up"
        );
        assert_eq!(value_text(Some(&typed(Value::UintVal(9000)))), "9000");
        assert_eq!(
            value_text(Some(&typed(Value::JsonIetfVal(
                b"\"managed by netsync\"".to_vec()
            )))),
            "managed by netsync"
        );
        assert_eq!(
            value_text(Some(&typed(Value::JsonIetfVal(
                b"{ \"a\" : [1, 2] }".to_vec()
            )))),
            r#"{"a":[1,2]}"#
        );
        assert_eq!(decimal_text(12345, 2), "123.45");
        assert_eq!(decimal_text(-5, 3), "-0.005");
        assert_eq!(
            value_json(Some(&typed(Value::IntVal(-3)))),
            serde_json::json!(-3)
        );
    }
}
