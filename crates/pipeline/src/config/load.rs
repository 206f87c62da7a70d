//! Loading a pipeline file: parsing with line numbers, `${VAR}` interpolation, secrets
//! masked in echoes, and the errors that name file, line, key and fix.

use super::*;

/// A configuration error: the file, where, what is wrong and how to fix it.
#[derive(Debug, thiserror::Error)]
#[error("{file}{}: {key}: {message}", line.map(|l| format!(":{l}")).unwrap_or_default())]
pub struct ConfigError {
    /// The pipeline file.
    pub file: String,
    /// Line number, when known.
    pub line: Option<usize>,
    /// The key, as a dotted path (`sinks.partner.input`).
    pub key: String,
    /// What is wrong and what to do.
    pub message: String,
}

/// Masks the values of keys that hold secrets even when written literally:
/// `Authorization`, `*token*`, `*password*`, `*secret*` (a string, or strings in a list).
fn mask_secret_keys(text: &str) -> String {
    static KEYS: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(
            r#"(?im)((?:^|[\s{,])"?[\w-]*(?:authorization|token|password|secret)[\w-]*"?\s*=\s*)("(?:[^"\\]|\\.)*"|\[[^\]]*\])"#,
        )
        .expect("a valid regex")
    });
    static STRING: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
        regex::Regex::new(r#""(?:[^"\\]|\\.)*""#).expect("a valid regex")
    });
    KEYS.replace_all(text, |c: &regex::Captures<'_>| {
        let key = c[1]
            .trim_end()
            .trim_end_matches('=')
            .trim_end()
            .trim_end_matches('"');
        if key.to_ascii_lowercase().ends_with("_file") {
            return c[0].to_owned(); // a path, not a secret
        }
        format!("{}{}", &c[1], STRING.replace_all(&c[2], "\"****\""))
    })
    .into_owned()
}

/// A parsed pipeline file with what is needed for error messages.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration.
    pub config: PipelineConfig,
    /// Path of the file (for messages and relative paths).
    pub path: PathBuf,
    /// The file's text with `${...}` resolved ([`crate::interpolate`]; to turn byte
    /// spans into line numbers).
    pub text: String,
    /// That text with secrets masked, for `hifi validate --print`.
    pub masked: String,
}

impl LoadedConfig {
    /// Reads and parses a pipeline file (syntax and unknown keys; the graph is checked
    /// by [`crate::topology::Topology::build`]).
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.display().to_string(),
            line: None,
            key: "(file)".into(),
            message: format!("cannot read the pipeline file: {e}"),
        })?;
        Self::parse(path, text)
    }

    /// Parses pipeline text as if read from `path`, after resolving its `${...}` from
    /// the environment and from files beside it.
    pub fn parse(path: &Path, text: String) -> Result<Self, ConfigError> {
        let dir = path.parent().unwrap_or(Path::new("."));
        let resolved =
            crate::interpolate::interpolate(&text, dir, &|name: &str| std::env::var(name).ok())
                .map_err(|e| ConfigError {
                    file: path.display().to_string(),
                    line: Some(e.line),
                    key: "(interpolation)".into(),
                    message: e.message,
                })?;
        let masked = mask_secret_keys(&resolved.masked());
        let text = resolved.text;
        let config: PipelineConfig = toml::from_str(&text).map_err(|e| {
            let line = e.span().map(|s| line_of(&text, s.start));
            ConfigError {
                file: path.display().to_string(),
                line,
                key: "(syntax)".into(),
                message: e.message().trim().to_owned(),
            }
        })?;
        Ok(LoadedConfig {
            config,
            path: path.to_path_buf(),
            text,
            masked,
        })
    }

    /// Line number (1-based) of a byte position in the file.
    pub fn line(&self, pos: usize) -> usize {
        line_of(&self.text, pos)
    }

    /// An error at a spanned value.
    pub fn error_at<T>(
        &self,
        at: &Spanned<T>,
        key: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.path.display().to_string(),
            line: Some(self.line(at.span().start)),
            key: key.into(),
            message: message.into(),
        }
    }

    /// An error without a known line.
    pub fn error(&self, key: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.display().to_string(),
            line: None,
            key: key.into(),
            message: message.into(),
        }
    }

    /// A path from the file, relative to the file's folder.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.path.parent().unwrap_or(Path::new(".")).join(p)
        }
    }
}

fn line_of(text: &str, pos: usize) -> usize {
    text.as_bytes()[..pos.min(text.len())]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// A product build (without the `test-hooks` feature) knows no test-only key. Runs with
/// `cargo test -p hifi-pipeline`; `cargo test --workspace` turns the feature on for the
/// binary's integration tests, and skips this.
#[cfg(all(test, not(feature = "test-hooks")))]
mod product_build {
    #[test]
    fn the_test_only_drop_hook_is_an_unknown_key() {
        let text = "[stages.s]\ninput = \"a\"\noutput = \"b\"\ntest_drop_ids_matching = \".*\"\n";
        let e = super::LoadedConfig::parse(std::path::Path::new("p.toml"), text.into())
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("unknown field `test_drop_ids_matching`"), "{e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_that_hold_secrets_are_masked_however_written() {
        let text = "[sinks.p]\nheaders = { Authorization = \"Bearer abc\", \"X-Api-Token\" = \"t\\\"1\", Accept = \"a\" }\n\
                    [sources.api.auth]\ntokens = [\"one\", \"two\"]\ntokens_file = \"tokens.txt\"\npassword = \"pw\"\n";
        let masked = mask_secret_keys(text);
        assert_eq!(
            masked,
            "[sinks.p]\nheaders = { Authorization = \"****\", \"X-Api-Token\" = \"****\", Accept = \"a\" }\n\
             [sources.api.auth]\ntokens = [\"****\", \"****\"]\ntokens_file = \"tokens.txt\"\npassword = \"****\"\n"
        );
    }
}
