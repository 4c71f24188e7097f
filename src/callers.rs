//! Who may call the gateway: `--caller-tokens-file`, lines `name:token` (`#` comments).
//! Callers present `authorization: Bearer TOKEN`; the name is what logs and metrics show,
//! the token never. The file is read again when it changes, so tokens rotate without a
//! restart. A file emptied (no caller left) or deleted revokes every token: taking
//! callers out is how access is withdrawn, so it fails closed. A file that no longer
//! parses (a half-written edit) keeps the tokens already loaded. Each change of state is
//! logged once, not every time the file is looked at.

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
    /// What was last read, to notice a change (and log each state once).
    loaded: RwLock<Seen>,
}

/// The file as last looked at.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// These bytes (by digest), loaded or refused.
    Bytes([u8; 32]),
    /// No file: every token revoked.
    Missing,
    /// Unreadable for another reason: the tokens loaded are kept.
    Unreadable,
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
        // At start, a file naming nobody is a mistake, not a revocation.
        if entries.is_empty() {
            return Err("names no caller".into());
        }
        Ok(Self {
            path: path.to_owned(),
            entries: RwLock::new(entries),
            loaded: RwLock::new(Seen::Bytes(sha256(&bytes))),
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

    /// Reads the file again if it changed: new tokens, none at all when it was emptied or
    /// deleted, the old ones when it no longer parses.
    fn reload(&self) {
        let (seen, bytes) = match std::fs::read(&self.path) {
            Ok(b) => (Seen::Bytes(sha256(&b)), Some(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Seen::Missing, None),
            Err(e) => {
                if self.saw(Seen::Unreadable) {
                    tracing::warn!(path = %self.path.display(), error = %e, "caller tokens file unreadable; keeping the tokens loaded");
                }
                return;
            }
        };
        if !self.saw(seen) {
            return;
        }
        let Some(bytes) = bytes else {
            self.entries
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .clear();
            tracing::error!(path = %self.path.display(), "caller tokens file deleted: every caller token is revoked until it is back");
            return;
        };
        match parse(&bytes) {
            Ok(entries) => {
                let count = entries.len();
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
                if count == 0 {
                    tracing::warn!(path = %self.path.display(), "caller tokens file names no caller: every caller token is revoked");
                } else {
                    tracing::info!(path = %self.path.display(), callers = count, "caller tokens reloaded");
                }
            }
            Err(why) => {
                tracing::warn!(path = %self.path.display(), %why, "caller tokens file is invalid; keeping the tokens loaded");
            }
        }
    }

    /// Records `now` as what the file looks like; true when that is a change.
    fn saw(&self, now: Seen) -> bool {
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        let changed = *loaded != now;
        *loaded = now;
        changed
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
/// non-empty and without whitespace; none at all is a file that revokes everyone.
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
            loaded: RwLock::new(Seen::Missing),
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
            (b"na me:zq-secret", "letters"),
        ] {
            let err = parse(bad).err().unwrap_or_default();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("zq-secret"), "{err}");
        }
        assert!(parse(b"# only comments\n").expect("valid").is_empty());
    }

    #[test]
    fn emptying_or_deleting_the_file_revokes_everyone_and_a_broken_edit_does_not() {
        let dir = std::env::temp_dir().join(format!("callers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("callers.txt");
        std::fs::write(&path, "siem:tok-1\n").expect("written");
        // Naming nobody at start is refused: a mistake, not a revocation.
        std::fs::write(dir.join("empty.txt"), "# nobody\n").expect("written");
        assert!(CallerTokens::load(&dir.join("empty.txt")).is_err());

        let tokens = CallerTokens::load(&path).expect("loads");
        assert_eq!(tokens.caller("tok-1").as_deref(), Some("siem"));
        // A half-written edit keeps what was loaded.
        std::fs::write(&path, "siem:").expect("written");
        tokens.reload();
        assert_eq!(tokens.caller("tok-1").as_deref(), Some("siem"));
        // Emptied: nobody gets in.
        std::fs::write(&path, "# everyone revoked\n").expect("written");
        tokens.reload();
        assert_eq!(tokens.caller("tok-1"), None);
        // Back, then deleted: nobody gets in either, until it is back.
        std::fs::write(&path, "siem:tok-2\n").expect("written");
        tokens.reload();
        assert_eq!(tokens.caller("tok-2").as_deref(), Some("siem"));
        std::fs::remove_file(&path).expect("removed");
        tokens.reload();
        assert_eq!(tokens.caller("tok-2"), None);
        std::fs::write(&path, "siem:tok-2\n").expect("written");
        tokens.reload();
        assert_eq!(tokens.caller("tok-2").as_deref(), Some("siem"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
