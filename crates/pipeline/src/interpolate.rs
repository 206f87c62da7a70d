//! `${...}` in a pipeline file's double-quoted strings, replaced before the file is
//! parsed:
//!
//! | form | value |
//! |---|---|
//! | `${NAME}` | environment variable `NAME` (an error when it is not set) |
//! | `${NAME:-default}` | `NAME`, or `default` when it is unset or empty |
//! | `${file:PATH}` | the contents of the file at `PATH` (relative to the pipeline file), without its trailing newline — for secrets mounted as files |
//! | `$${` | a literal `${` |
//!
//! Only double-quoted strings (basic and multi-line basic) are read: comments and
//! single-quoted (literal) strings stay as written. Values are escaped for the string
//! they land in, so a value cannot change the file's structure, and never add a line
//! (errors keep their line numbers).
//!
//! The text for `hifi validate --print` masks what is secret: every `${file:...}` value
//! and every variable whose name says it is a secret (`TOKEN`, `SECRET`, `PASSWORD`,
//! `KEY`, `CREDENTIAL`).

use std::ops::Range;
use std::path::Path;

/// The file with every `${...}` replaced, and the byte ranges (in it) of secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interpolated {
    /// The text to parse.
    pub text: String,
    /// Where secret values are in `text`.
    pub secrets: Vec<Range<usize>>,
}

impl Interpolated {
    /// The text with secret values replaced by `****`.
    pub fn masked(&self) -> String {
        let mut out = String::with_capacity(self.text.len());
        let mut at = 0;
        for r in &self.secrets {
            out.push_str(&self.text[at..r.start]);
            out.push_str("****");
            at = r.end;
        }
        out.push_str(&self.text[at..]);
        out
    }
}

/// A `${...}` that cannot be resolved: its line (1-based) and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterpolationError {
    pub line: usize,
    pub message: String,
}

/// Where the scan is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum In {
    Code,
    Comment,
    Basic,
    MultiBasic,
    Literal,
    MultiLiteral,
}

/// Replaces `${...}` in `text`; `dir` is where relative `file:` paths start; `env`
/// reads a variable.
pub fn interpolate(
    text: &str,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Interpolated, InterpolationError> {
    let bytes = text.as_bytes();
    let mut out = String::with_capacity(text.len());
    let mut secrets = Vec::new();
    let mut state = In::Code;
    let mut i = 0;
    let line = |at: usize| text[..at].matches('\n').count() + 1;
    while i < bytes.len() {
        let rest = &text[i..];
        let c = bytes[i];
        match state {
            In::Code => {
                if rest.starts_with("\"\"\"") {
                    state = In::MultiBasic;
                    out.push_str("\"\"\"");
                    i += 3;
                    continue;
                }
                if rest.starts_with("'''") {
                    state = In::MultiLiteral;
                    out.push_str("'''");
                    i += 3;
                    continue;
                }
                state = match c {
                    b'"' => In::Basic,
                    b'\'' => In::Literal,
                    b'#' => In::Comment,
                    _ => In::Code,
                };
            }
            In::Comment if c == b'\n' => state = In::Code,
            In::Literal if c == b'\'' || c == b'\n' => state = In::Code,
            In::MultiLiteral if rest.starts_with("'''") => {
                state = In::Code;
                out.push_str("'''");
                i += 3;
                continue;
            }
            In::Basic | In::MultiBasic => {
                let closing = match state {
                    In::Basic => c == b'"' || c == b'\n',
                    _ => rest.starts_with("\"\"\""),
                };
                if c == b'\\' && i + 1 < bytes.len() {
                    // An escape: copied as it is, whatever it escapes.
                    let next = rest[1..].chars().next().map_or(1, char::len_utf8);
                    out.push_str(&rest[..1 + next]);
                    i += 1 + next;
                    continue;
                }
                if closing && state == In::MultiBasic {
                    state = In::Code;
                    out.push_str("\"\"\"");
                    i += 3;
                    continue;
                } else if closing {
                    state = In::Code;
                } else if rest.starts_with("$${") {
                    out.push_str("${");
                    i += 3;
                    continue;
                } else if rest.starts_with("${") {
                    let end = rest.find('}').ok_or_else(|| InterpolationError {
                        line: line(i),
                        message: "`${` without a closing `}` (write `$${` for a literal `${`)"
                            .into(),
                    })?;
                    let expr = &rest[2..end];
                    let (value, secret) =
                        resolve(expr, dir, env).map_err(|message| InterpolationError {
                            line: line(i),
                            message,
                        })?;
                    let start = out.len();
                    escape_into(&mut out, &value);
                    if secret {
                        secrets.push(start..out.len());
                    }
                    i += end + 1;
                    continue;
                }
            }
            _ => {}
        }
        let len = rest.chars().next().map_or(1, char::len_utf8);
        out.push_str(&rest[..len]);
        i += len;
    }
    Ok(Interpolated { text: out, secrets })
}

/// The value of one `${expr}` and whether it is secret.
fn resolve(
    expr: &str,
    dir: &Path,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<(String, bool), String> {
    if let Some(path) = expr.strip_prefix("file:") {
        let path = dir.join(path.trim());
        let value = std::fs::read_to_string(&path)
            .map_err(|e| format!("cannot read the secret file {}: {e}", path.display()))?;
        let value = value.strip_suffix('\n').unwrap_or(&value);
        let value = value.strip_suffix('\r').unwrap_or(value);
        return Ok((value.to_owned(), true));
    }
    let (name, default) = match expr.split_once(":-") {
        Some((n, d)) => (n, Some(d)),
        None => (expr, None),
    };
    let valid = !name.is_empty()
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if !valid {
        return Err(format!(
            "`${{{expr}}}`: a variable name is letters, digits and `_` (or write `${{file:PATH}}`)"
        ));
    }
    let secret = ["TOKEN", "SECRET", "PASSWORD", "PASSWD", "KEY", "CREDENTIAL"]
        .iter()
        .any(|w| name.to_ascii_uppercase().contains(w));
    match (
        env(name).filter(|v| !v.is_empty() || default.is_none()),
        default,
    ) {
        (Some(v), _) => Ok((v, secret)),
        (None, Some(d)) => Ok((d.to_owned(), secret)),
        (None, None) => Err(format!(
            "environment variable {name} is not set (set it, or write ${{{name}:-default}})"
        )),
    }
}

/// Escapes a value for a basic string: `\`, `"` and control characters (newlines too,
/// so the file keeps its lines).
fn escape_into(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{:04X}", c as u32)),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "URL" => Some("http://partner:9000/in".into()),
            "EMPTY" => Some(String::new()),
            "API_TOKEN" => Some("s3cr\"et\nx".into()),
            _ => None,
        }
    }

    fn run(text: &str) -> Result<Interpolated, InterpolationError> {
        interpolate(text, Path::new("/nonexistent"), &env)
    }

    #[test]
    fn variables_defaults_and_escapes_in_double_quoted_strings() {
        let t =
            run("url = \"${URL}\"\nx = \"${MISSING:-fallback} ${EMPTY:-was empty}\"\n").unwrap();
        assert_eq!(
            t.text,
            "url = \"http://partner:9000/in\"\nx = \"fallback was empty\"\n"
        );
        assert!(t.secrets.is_empty());
        // A value cannot break out of its string, nor add a line.
        let t = run("h = { Authorization = \"Bearer ${API_TOKEN}\" }\n").unwrap();
        assert_eq!(
            t.text,
            "h = { Authorization = \"Bearer s3cr\\\"et\\nx\" }\n"
        );
        let parsed: toml::Value = toml::from_str(&t.text).unwrap();
        assert_eq!(
            parsed["h"]["Authorization"].as_str(),
            Some("Bearer s3cr\"et\nx")
        );
        assert_eq!(t.masked(), "h = { Authorization = \"Bearer ****\" }\n");
    }

    #[test]
    fn comments_literal_strings_and_escapes_are_left_alone() {
        let text = "# uses ${NOT_SET}\nx = '${NOT_SET}'\ny = \"\\${URL} $${URL}\"\nz = \"\"\"\n${URL}\"\"\"\n";
        let t = run(text).unwrap();
        assert_eq!(
            t.text,
            "# uses ${NOT_SET}\nx = '${NOT_SET}'\ny = \"\\${URL} ${URL}\"\nz = \"\"\"\nhttp://partner:9000/in\"\"\"\n"
        );
    }

    #[test]
    fn unresolvable_references_name_their_line() {
        let e = run("a = 1\nb = \"${NOT_SET}\"\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert!(e.message.contains("NOT_SET is not set"), "{}", e.message);
        assert!(run("b = \"${bad name}\"")
            .unwrap_err()
            .message
            .contains("letters"));
        assert!(run("b = \"${URL\"")
            .unwrap_err()
            .message
            .contains("closing"));
        let e = run("b = \"${file:no-such-file}\"").unwrap_err();
        assert!(
            e.message.contains("cannot read the secret file"),
            "{}",
            e.message
        );
    }

    #[test]
    fn secret_files_are_read_relative_to_the_pipeline_file_and_masked() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("token"), "abc123\n").unwrap();
        let t = interpolate("t = \"${file:token}\"", dir.path(), &env).unwrap();
        assert_eq!(t.text, "t = \"abc123\"");
        assert_eq!(t.masked(), "t = \"****\"");
    }
}
