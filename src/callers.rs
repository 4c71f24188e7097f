//! Who calls the gateway ([`Caller`]), and who may: `--caller-tokens-file`, lines
//! `name:token`, optionally followed by `weight=N max-streams=N miss-rate=N` (`#`
//! comments). Callers present `authorization: Bearer TOKEN`; the name is what logs and
//! metrics show, the token never. The file is read again when it changes, so tokens
//! rotate without a restart, and a reload swaps the whole set at once. A file that
//! names no caller (only comments) revokes every token: taking callers out is how access
//! is withdrawn. A file deleted, unreadable or no longer parsing (a half-written edit)
//! keeps the last good set and counts `audit_gateway_caller_tokens_reload_errors_total`,
//! so an alert can fire. Each change of state is logged once, not every time the file is
//! looked at.

use std::{
    path::{Path, PathBuf},
    sync::{Arc, LazyLock, RwLock},
};

use ring::digest;

use crate::metrics::METRICS;

/// What is wrong with a caller tokens file (never showing a token).
#[derive(Debug, thiserror::Error)]
pub(crate) enum TokensFileError {
    /// It cannot be read.
    #[error("cannot read {path}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Its bytes are not text.
    #[error("not UTF-8")]
    NotUtf8,
    /// A line is not `name:token [settings]`.
    #[error("line {line}: {why}")]
    Line {
        /// 1-based.
        line: usize,
        /// What is wrong with it.
        why: String,
    },
    /// It names nobody (at start: a mistake, not a revocation).
    #[error("names no caller")]
    NamesNobody,
}

/// Who a call is, as fair shares, caps, metrics and logs count it.
#[derive(Clone, Debug)]
pub(crate) struct Caller {
    /// What shares and caps are kept under: a configured name, a certificate's SAN, a
    /// mesh header's value, a credential's keyed fingerprint; never a secret.
    pub id: Arc<str>,
    /// What metrics show: a configured name, `anonymous` or `other` (a bounded set).
    pub label: Arc<str>,
    /// Its share of Confluence's request slots against other callers' (at least 1).
    pub weight: u32,
    /// Its own `--caller-max-streams`, if the tokens file gives one.
    pub max_streams: Option<usize>,
    /// Its own `--caller-miss-rate`, if the tokens file gives one.
    pub miss_rate: Option<u32>,
}

/// The anonymous caller, made once: every call nobody identified is it, and cloning it
/// costs no allocation.
static ANONYMOUS: LazyLock<Caller> =
    LazyLock::new(|| Caller::other("anonymous".into(), "anonymous"));

impl Caller {
    /// Every call nobody identified: one caller, which per-caller caps leave alone (it is
    /// the whole gateway's traffic, whose caps are gateway-wide).
    pub(crate) fn anonymous() -> Self {
        ANONYMOUS.clone()
    }

    /// A caller identified by something not named in the tokens file.
    pub(crate) fn other(id: Arc<str>, label: &str) -> Self {
        Self {
            id,
            label: label.into(),
            weight: 1,
            max_streams: None,
            miss_rate: None,
        }
    }

    /// Whether per-caller caps apply (not to the anonymous caller).
    pub(crate) fn capped(&self) -> bool {
        &*self.id != "anonymous"
    }
}

/// One caller: who it is and a digest of its token (comparisons never touch the token).
#[derive(Clone)]
struct Entry {
    caller: Caller,
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
    /// No file: the last good set is kept.
    Missing,
    /// Unreadable for another reason: the last good set is kept.
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
    pub(crate) fn load(path: &Path) -> Result<Self, TokensFileError> {
        let bytes = std::fs::read(path).map_err(|source| TokensFileError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let entries = parse(&bytes)?;
        // At start, a file naming nobody is a mistake, not a revocation.
        if entries.is_empty() {
            return Err(TokensFileError::NamesNobody);
        }
        Ok(Self {
            path: path.to_owned(),
            entries: RwLock::new(entries),
            loaded: RwLock::new(Seen::Bytes(sha256(&bytes))),
        })
    }

    /// The caller whose token this is, if any. Every entry is compared, in constant
    /// time, so the time taken tells nothing about the tokens.
    pub(crate) fn caller(&self, token: &str) -> Option<Caller> {
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
                found = Some(e.caller.clone());
            }
        }
        found
    }

    /// Reads the file again if it changed: the new set, none at all when it names no
    /// caller, the last good one when it is gone, unreadable or invalid.
    fn reload(&self) {
        let path = self.path.display();
        let (seen, bytes) = match std::fs::read(&self.path) {
            Ok(b) => (Seen::Bytes(sha256(&b)), Ok(b)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Seen::Missing, Err(e)),
            Err(e) => (Seen::Unreadable, Err(e)),
        };
        if !self.saw(seen) {
            return;
        }
        let parsed = bytes
            .map_err(|source| TokensFileError::Read {
                path: self.path.display().to_string(),
                source,
            })
            .and_then(|b| parse(&b));
        match parsed {
            Ok(entries) => {
                let count = entries.len();
                *self.entries.write().unwrap_or_else(|p| p.into_inner()) = entries;
                if count == 0 {
                    tracing::warn!(%path, "caller tokens file names no caller: every caller token is revoked");
                } else {
                    tracing::info!(%path, callers = count, "caller tokens reloaded");
                }
            }
            Err(e) => {
                METRICS.caller_tokens_reload_errors.inc();
                let why = crate::error::Chain(&e);
                tracing::error!(%path, %why, "caller tokens file not reloaded; keeping the last good set");
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

/// `name:token [weight=N] [max-streams=N] [miss-rate=N]` lines; blank lines and `#`
/// comments are skipped. Names are unique, tokens non-empty and without whitespace; none
/// at all is a file that revokes everyone.
fn parse(bytes: &[u8]) -> Result<Vec<Entry>, TokensFileError> {
    let text = std::str::from_utf8(bytes).map_err(|_| TokensFileError::NotUtf8)?;
    let mut entries: Vec<Entry> = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = |why: &str| TokensFileError::Line {
            line: n + 1,
            why: why.to_owned(),
        };
        let (name, rest) = line
            .split_once(':')
            .ok_or_else(|| at("expected name:token"))?;
        let name = name.trim();
        let mut words = rest.split_whitespace();
        let token = words.next().unwrap_or_default();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        {
            return Err(at("a name is letters, digits, '-', '_' or '.'"));
        }
        if token.is_empty() {
            return Err(at("the token is empty"));
        }
        if matches!(name, "anonymous" | "other") {
            return Err(at(
                "anonymous and other are the names metrics give unnamed callers",
            ));
        }
        let mut caller = Caller::other(name.into(), name);
        for word in words {
            let (key, value) = word.split_once('=').ok_or_else(|| {
                at("after the token: weight=N, max-streams=N or miss-rate=N (a token holds no whitespace)")
            })?;
            let number = value
                .parse::<u32>()
                .ok()
                .filter(|v| *v > 0 || key == "miss-rate")
                .ok_or_else(|| at(&format!("{key} must be a whole number (at least 1)")))?;
            match key {
                "weight" => caller.weight = number,
                "max-streams" => caller.max_streams = Some(number as usize),
                "miss-rate" => caller.miss_rate = Some(number),
                _ => return Err(at(&format!("unknown setting {key}"))),
            }
        }
        if entries.iter().any(|e| &*e.caller.id == name) {
            return Err(at(&format!("the name {name} appears twice")));
        }
        entries.push(Entry {
            caller,
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
        assert_eq!(name(&tokens, "tok-1").as_deref(), Some("siem"));
        assert_eq!(name(&tokens, "tok-2").as_deref(), Some("billing"));
        assert_eq!(name(&tokens, "tok-3"), None);
        assert_eq!(name(&tokens, ""), None);
        assert!(!format!("{tokens:?}").contains("tok-1"));
    }

    #[test]
    fn bad_files_are_refused_without_showing_a_token() {
        for (bad, why) in [
            (&b"no colon here"[..], "name:token"),
            (b"a:", "empty"),
            (b"a:zq-secret zq", "whitespace"),
            (b"a:zq-secret weight=0", "at least 1"),
            (b"a:zq-secret color=2", "unknown setting"),
            (b"other:zq-secret", "unnamed"),
            (b"a:zq-secret\na:y", "twice"),
            (b"na me:zq-secret", "letters"),
        ] {
            let err = parse(bad).err().map(|e| e.to_string()).unwrap_or_default();
            assert!(err.contains(why), "{err}");
            assert!(!err.contains("zq-secret"), "{err}");
        }
        assert!(parse(b"# only comments\n").expect("valid").is_empty());
    }

    fn name(tokens: &CallerTokens, token: &str) -> Option<String> {
        tokens.caller(token).map(|c| c.id.to_string())
    }

    #[test]
    fn settings_after_the_token_give_a_caller_its_share_and_caps() {
        let entries =
            parse(b"siem:tok-1 weight=3 max-streams=8 miss-rate=0\nops:tok-2\n").expect("valid");
        let siem = &entries[0].caller;
        assert_eq!(
            (siem.weight, siem.max_streams, siem.miss_rate),
            (3, Some(8), Some(0))
        );
        assert_eq!(&*siem.label, "siem");
        let ops = &entries[1].caller;
        assert_eq!(
            (ops.weight, ops.max_streams, ops.miss_rate),
            (1, None, None)
        );
    }

    #[test]
    fn emptying_the_file_revokes_everyone_and_deleting_or_breaking_it_does_not() {
        let dir = std::env::temp_dir().join(format!("callers-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("a temp dir");
        let path = dir.join("callers.txt");
        std::fs::write(&path, "siem:tok-1\n").expect("written");
        // Naming nobody at start is refused: a mistake, not a revocation.
        std::fs::write(dir.join("empty.txt"), "# nobody\n").expect("written");
        assert!(CallerTokens::load(&dir.join("empty.txt")).is_err());

        let errors = || METRICS.caller_tokens_reload_errors.get();
        let tokens = CallerTokens::load(&path).expect("loads");
        assert_eq!(name(&tokens, "tok-1").as_deref(), Some("siem"));
        // A half-written edit keeps what was loaded, and counts.
        let before = errors();
        std::fs::write(&path, "siem:").expect("written");
        tokens.reload();
        assert_eq!(name(&tokens, "tok-1").as_deref(), Some("siem"));
        assert!(errors() > before);
        // Emptied: nobody gets in.
        std::fs::write(&path, "# everyone revoked\n").expect("written");
        tokens.reload();
        assert_eq!(name(&tokens, "tok-1"), None);
        // Back, then deleted: the last good set stays, and the failure counts once.
        std::fs::write(&path, "siem:tok-2\n").expect("written");
        tokens.reload();
        assert_eq!(name(&tokens, "tok-2").as_deref(), Some("siem"));
        std::fs::remove_file(&path).expect("removed");
        let before = errors();
        tokens.reload();
        tokens.reload();
        assert_eq!(name(&tokens, "tok-2").as_deref(), Some("siem"));
        assert!(errors() > before);
        std::fs::write(&path, "siem:tok-3\n").expect("written");
        tokens.reload();
        assert_eq!(name(&tokens, "tok-3").as_deref(), Some("siem"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
