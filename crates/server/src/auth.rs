//! Bearer tokens of the ingest listeners (`[sources.X.auth]`) and of the admin API
//! (`[admin.auth]`).
//!
//! A token set is never empty: an `auth` section without any token (`tokens = []`, or a
//! `tokens_file` with only comments) is a configuration error, never "authentication
//! off" — that is what leaving `auth` out says. Tokens are compared in constant time
//! (`subtle`), against every configured token, so neither the match nor its position
//! shows in the answer's timing.

use axum::http::{header, HeaderMap};
use hifi_pipeline::config::{AuthConfig, LoadedConfig};
use subtle::ConstantTimeEq;

/// The accepted tokens of one listener (at least one).
#[derive(Clone)]
pub struct Tokens(Vec<Vec<u8>>);

impl std::fmt::Debug for Tokens {
    /// Never prints the tokens.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokens({} configured)", self.0.len())
    }
}

impl Tokens {
    /// The tokens of an `auth` section (`key` names it in errors: `sources.api.auth`):
    /// inline ones plus those of `tokens_file` (relative to the pipeline file).
    /// `Ok(None)` when there is no `auth` section.
    pub fn load(
        cfg: Option<&AuthConfig>,
        loaded: &LoadedConfig,
        key: &str,
    ) -> Result<Option<Tokens>, String> {
        let Some(cfg) = cfg else { return Ok(None) };
        let mut tokens: Vec<String> = cfg
            .tokens
            .iter()
            .map(|t| t.trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if let Some(p) = &cfg.tokens_file {
            let path = loaded.resolve(p);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("{key}.tokens_file: cannot read {}: {e}", path.display()))?;
            tokens.extend(parse_tokens_file(&text));
        }
        if tokens.is_empty() {
            return Err(format!(
                "{key}: no token configured (tokens is empty{}); an empty token set would \
                 let everyone in — add a token, or remove the auth section to run without \
                 authentication",
                if cfg.tokens_file.is_some() {
                    " and tokens_file has none"
                } else {
                    ""
                }
            ));
        }
        Ok(Some(Tokens(
            tokens.into_iter().map(String::into_bytes).collect(),
        )))
    }

    /// Whether the request carries `Authorization: Bearer <one of the tokens>`.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        let Some(given) = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
        else {
            return false;
        };
        let given = given.trim().as_bytes();
        // Every token is compared; no early exit.
        self.0
            .iter()
            .fold(subtle::Choice::from(0), |ok, t| {
                ok | t.as_slice().ct_eq(given)
            })
            .into()
    }
}

/// A listener's tokens that may change while it runs: a `tokens_file` is read again when
/// it changes (checked every [`TOKENS_FILE_CHECK`]), so tokens can be rotated without a
/// restart. A file that becomes empty (or unreadable) keeps the tokens in force and logs
/// an error: it never turns authentication off.
#[derive(Debug)]
pub struct LiveTokens {
    current: std::sync::RwLock<Tokens>,
}

/// How often a tokens file is checked for changes.
pub const TOKENS_FILE_CHECK: std::time::Duration = std::time::Duration::from_secs(2);

impl LiveTokens {
    /// Tokens in force from now on.
    pub fn new(tokens: Tokens) -> Self {
        LiveTokens {
            current: std::sync::RwLock::new(tokens),
        }
    }

    /// Whether the request carries one of the tokens in force.
    pub fn accepts(&self, headers: &HeaderMap) -> bool {
        self.current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .accepts(headers)
    }

    /// Follows the `tokens_file` of `cfg` until `stop`: when the file changes, its
    /// tokens (with the inline ones) replace those in force — unless it yields none.
    pub async fn follow(
        self: std::sync::Arc<Self>,
        cfg: AuthConfig,
        loaded: LoadedConfig,
        key: String,
        stop: tokio_util::sync::CancellationToken,
    ) {
        let Some(file) = cfg.tokens_file.as_ref().map(|p| loaded.resolve(p)) else {
            return;
        };
        let stamp = |p: &std::path::Path| {
            std::fs::metadata(p)
                .ok()
                .map(|m| (m.modified().ok(), m.len()))
        };
        let mut seen = stamp(&file);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(TOKENS_FILE_CHECK) => {}
            }
            let now = stamp(&file);
            if now == seen {
                continue;
            }
            seen = now;
            match Tokens::load(Some(&cfg), &loaded, &key) {
                Ok(Some(t)) => {
                    tracing::info!(%key, file = %file.display(), tokens = t.0.len(), "tokens file changed; tokens reloaded");
                    *self.current.write().unwrap_or_else(|p| p.into_inner()) = t;
                }
                Ok(None) => {}
                Err(e) => tracing::error!(%key, error = %e,
                    "tokens file changed but yields no usable token; the tokens in force are kept"),
            }
        }
    }
}

/// Tokens of a tokens file: one per line, blank lines and `#` comments ignored.
pub fn parse_tokens_file(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)] // tests fail loudly by design
    use super::*;
    use std::path::Path;

    fn loaded() -> LoadedConfig {
        let text = "[engine]\nkind = \"embedded\"\n[sources.api]\ntype = \"http\"\ntopic = \"e\"\n"
            .to_owned();
        LoadedConfig::parse(Path::new("/tmp/p.toml"), text).unwrap()
    }

    fn auth(tokens: &[&str], file: Option<&Path>) -> AuthConfig {
        AuthConfig {
            tokens: tokens.iter().map(|t| t.to_string()).collect(),
            tokens_file: file.map(Path::to_path_buf),
        }
    }

    fn bearer(t: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            format!("Bearer {t}").parse().unwrap(),
        );
        h
    }

    #[test]
    fn an_empty_token_set_is_an_error_not_auth_off() {
        let l = loaded();
        let e = Tokens::load(Some(&auth(&[], None)), &l, "sources.api.auth").unwrap_err();
        assert!(e.contains("sources.api.auth: no token configured"), "{e}");
        let e = Tokens::load(Some(&auth(&["  "], None)), &l, "k").unwrap_err();
        assert!(e.contains("no token"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# only a comment\n\n").unwrap();
        let e = Tokens::load(Some(&auth(&[], Some(&file))), &l, "k").unwrap_err();
        assert!(e.contains("tokens_file has none"), "{e}");
        assert!(Tokens::load(None, &l, "k").unwrap().is_none());
    }

    #[test]
    fn only_a_configured_token_is_accepted() {
        let l = loaded();
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tokens");
        std::fs::write(&file, "# ops\nfrom-file\n").unwrap();
        let t = Tokens::load(Some(&auth(&["inline"], Some(&file))), &l, "k")
            .unwrap()
            .unwrap();
        assert!(t.accepts(&bearer("inline")));
        assert!(t.accepts(&bearer("from-file")));
        assert!(!t.accepts(&bearer("inlin")));
        assert!(!t.accepts(&bearer("inline2")));
        assert!(!t.accepts(&bearer("")));
        assert!(!t.accepts(&HeaderMap::new()));
        assert_eq!(format!("{t:?}"), "Tokens(2 configured)");
    }
}
