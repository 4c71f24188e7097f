//! Who may call the gateway: `--caller-tokens-file`, lines `name:token` (`#` comments).
//! Callers present `authorization: Bearer TOKEN`; the name is what logs and metrics show,
//! the token never. The file is read again when it changes, so tokens rotate without a
//! restart; a file that no longer parses keeps the tokens already loaded.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, RwLock},
};

use ring::digest;

/// One caller: its name and a digest of its token (comparisons never touch the token).
#[derive(Clone)]
struct Entry {
    name: Arc<str>,
    digest: [u8; 32],
}

/// The callers allowed in, as last read from their file.
pub(crate) struct CallerTokens {
    path: PathBuf,
    entries: RwLock<Vec<Entry>>,
    /// Digest of the file's bytes as last loaded, to notice a change.
    loaded: RwLock<[u8; 32]>,
}

impl std::fmt::Debug for CallerTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallerTokens")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl CallerTokens {
    /// Reads `path`; the error says what is wrong with it (never a token).
    pub(crate) fn load(path: &Path) -> Result<Self, String> {
        let bytes =
            std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
        let entries = parse(&bytes)?;
        Ok(Self {
            path: path.to_owned(),
            entries: RwLock::new(entries),
            loaded: RwLock::new(sha256(&bytes)),
        })
    }

    /// The name of the caller whose token this is, if any. Every entry is compared, in
    /// constant time, so the time taken tells nothing about the tokens.
    pub(crate) fn caller(&self, token: &str) -> Option<Arc<str>> {
        let presented = sha256(token.as_bytes());
        let entries = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let mut found = None;
        for e in entries.iter() {
            let differs = e
                .digest
                .iter()
                .zip(&presented)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b));
            if differs == 0 {
                found = Some(e.name.clone());
            }
        }
        found
    }

    /// Reads the file again if it changed; keeps the old tokens if it no longer parses.
    fn reload(&self) {
        let bytes = match std::fs::read(&self.path) {
            Ok(b) => b,
            Err(e) => {
                tracing::warn!(path = %self.path.display(), error = %e, "caller tokens file unreadable; keeping the tokens loaded");
                return;
            }
        };
        let digest = sha256(&bytes);
        if *self.loaded.read().unwrap_or_else(|p| p.into_inner()) == digest {
            return;
        }
        match parse(&bytes) {
            Ok(entries) => {
                let count = entries.len();
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
                *self.loaded.write().unwrap_or_else(|p| p.into_inner()) = digest;
                tracing::info!(path = %self.path.display(), callers = count, "caller tokens reloaded");
            }
            Err(why) => {
                tracing::warn!(path = %self.path.display(), %why, "caller tokens file is invalid; keeping the tokens loaded");
            }
        }
    }

    /// Looks at the file for changes until the returned task is aborted (it holds only a
    /// weak reference: it ends by itself once the gateway is gone).
    pub(crate) fn watch(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        crate::reload::every_second(self, Self::reload)
    }
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, bytes).as_ref());
    out
}

/// `name:token` lines; blank lines and `#` comments are skipped. Names are unique, tokens
/// non-empty and without whitespace; at least one caller.
fn parse(bytes: &[u8]) -> Result<Vec<Entry>, String> {
    let text = std::str::from_utf8(bytes).map_err(|_| "not UTF-8".to_owned())?;
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (name, token) = line
            .split_once(':')
            .ok_or_else(|| format!("line {}: expected name:token", n + 1))?;
        let (name, token) = (name.trim(), token.trim());
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(format!(
                "line {}: a name is letters, digits, '-', '_' or '.'",
                n + 1
            ));
        }
        if token.is_empty() || token.chars().any(char::is_whitespace) {
            return Err(format!(
                "line {}: the token is empty or holds whitespace",
                n + 1
            ));
        }
        if entries.iter().any(|e| &*e.name == name) {
            return Err(format!("line {}: the name {name} appears twice", n + 1));
        }
        entries.push(Entry {
            name: name.into(),
            digest: sha256(token.as_bytes()),
        });
    }
    if entries.is_empty() {
        return Err("names no caller".into());
    }
    Ok(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_name_callers_and_tokens_find_them() {
        let entries = parse(b"# ops\nsiem:tok-1\n\n  billing : tok-2 \n").expect("valid");
        let tokens = CallerTokens {
            path: PathBuf::new(),
            entries: RwLock::new(entries),
            loaded: RwLock::new([0; 32]),
        };
        assert_eq!(tokens.caller("tok-1").as_deref(), Some("siem"));
        assert_eq!(tokens.caller("tok-2").as_deref(), Some("billing"));
        assert_eq!(tokens.caller("tok-3"), None);
        assert_eq!(tokens.caller(""), None);
        assert!(!format!("{tokens:?}").contains("tok-1"));
    }

    #[test]
    fn bad_files_are_refused_without_showing_a_token() {
        for (bad, why) in [
            (&b"no colon here"[..], "name:token"),
            (b"a:", "empty"),
            (b"a:zq-secret zq", "whitespace"),
            (b"a:zq-secret\na:y", "twice"),
            (b"# only comments\n", "no caller"),
            (b"na me:zq-secret", "letters"),
        ] {
            let err = parse(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("zq-secret"), "{err}");
        }
    }
}
