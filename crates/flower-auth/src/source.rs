//! Where tokens come from: the [`TokenSource`] trait, [`StaticTokens`] and
//! [`FileTokens`]. (Vault lives in [`crate::vault`].)

use std::fmt;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;

use crate::error::AuthError;

/// A place tokens are loaded from, once at start-up and again on every
/// reload.
///
/// Implementations must never put a token value in an error or in
/// [`TokenSource::describe`].
pub trait TokenSource: Send + Sync + 'static {
    /// Short, log-safe description (`"token file /etc/flower/tokens"`).
    fn describe(&self) -> String;

    /// Loads the complete current list of accepted tokens.
    ///
    /// # Errors
    /// Any failure: the caller then keeps the tokens it had (for at most
    /// its staleness bound). An empty result ([`AuthError::NoTokens`]) is
    /// fatal at start-up and revokes every token on a reload.
    fn load(&self) -> BoxFuture<'_, Result<Vec<String>, AuthError>>;
}

/// A fixed list of tokens (the server's repeatable `--token`).
#[derive(Clone)]
pub struct StaticTokens {
    tokens: Vec<String>,
}

impl StaticTokens {
    /// A fixed list. Surrounding whitespace is trimmed.
    ///
    /// # Errors
    /// [`AuthError::NoTokens`] when the list is empty (or only blank), as
    /// ai4flwr refuses an interceptor without tokens.
    pub fn new<I, S>(tokens: I) -> Result<Self, AuthError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let tokens: Vec<String> = tokens
            .into_iter()
            .map(|t| t.into().trim().to_owned())
            .filter(|t| !t.is_empty())
            .collect();
        if tokens.is_empty() {
            return Err(AuthError::NoTokens {
                source_description: "the static token list".into(),
            });
        }
        Ok(Self { tokens })
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticTokens")
            .field("len", &self.tokens.len())
            .finish()
    }
}

impl TokenSource for StaticTokens {
    fn describe(&self) -> String {
        format!("{} static token(s)", self.tokens.len())
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<String>, AuthError>> {
        Box::pin(async move { Ok(self.tokens.clone()) })
    }
}

/// Tokens read from a file: one per line, surrounding whitespace trimmed,
/// blank lines ignored. A missing, unreadable or empty file is an error
/// (for an empty file on a reload, see [`AuthError::NoTokens`]). A
/// world-readable file is used, with a warning.
#[derive(Debug, Clone)]
pub struct FileTokens {
    path: PathBuf,
}

impl FileTokens {
    /// Tokens from the file at `path` (read on every load).
    #[must_use]
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    /// Path of the file.
    #[must_use]
    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Splits file content into tokens: one per line, trimmed, blank lines
/// ignored.
pub(crate) fn parse_token_lines(content: &str) -> Vec<String> {
    content
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}

impl TokenSource for FileTokens {
    fn describe(&self) -> String {
        format!("token file {}", self.path.display())
    }

    fn load(&self) -> BoxFuture<'_, Result<Vec<String>, AuthError>> {
        Box::pin(async move {
            let content = tokio::fs::read_to_string(&self.path)
                .await
                .map_err(|source| AuthError::TokenFile {
                    path: self.path.clone(),
                    source,
                })?;
            warn_if_world_readable(&self.path).await;
            let tokens = parse_token_lines(&content);
            if tokens.is_empty() {
                return Err(AuthError::NoTokens {
                    source_description: self.describe(),
                });
            }
            Ok(tokens)
        })
    }
}

/// Warns when others than the owner's group may read the token file.
async fn warn_if_world_readable(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = tokio::fs::metadata(path).await {
            let mode = meta.permissions().mode();
            if mode & 0o004 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format_args!("{:o}", mode & 0o777),
                    "the token file is world-readable: any local user can read the tokens; chmod 600 it"
                );
            }
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_trimmed_and_blank_lines_skipped() {
        assert_eq!(
            parse_token_lines("  a \n\n\tb\r\n   \nc"),
            vec!["a".to_owned(), "b".into(), "c".into()]
        );
    }

    #[test]
    fn empty_static_list_is_an_error() {
        assert!(matches!(
            StaticTokens::new(Vec::<String>::new()),
            Err(AuthError::NoTokens { .. })
        ));
        assert!(StaticTokens::new(["  "]).is_err());
        let s = StaticTokens::new(["tok-secret"]).unwrap();
        assert!(!format!("{s:?}{}", s.describe()).contains("tok-secret"));
    }

    #[tokio::test]
    async fn file_errors() {
        let dir = tempfile::tempdir().unwrap();
        let missing = FileTokens::new(dir.path().join("missing"));
        assert!(matches!(
            missing.load().await,
            Err(AuthError::TokenFile { .. })
        ));
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n  \n").unwrap();
        assert!(matches!(
            FileTokens::new(&empty).load().await,
            Err(AuthError::NoTokens { .. })
        ));
        let good = dir.path().join("good");
        std::fs::write(&good, "x\n y \n").unwrap();
        assert_eq!(
            FileTokens::new(&good).load().await.unwrap(),
            vec!["x".to_owned(), "y".into()]
        );
    }
}
