//! Credentials for Confluence: the `Authorization` header value, never printed, and its
//! keyed fingerprint, which is what cache keys hold instead.

use std::{fmt, sync::Arc};

use base64::{Engine, engine::general_purpose::STANDARD};
use ring::hmac;

/// Whose credential calls Confluence, once checked.
#[derive(Clone, Debug)]
pub(crate) enum CredentialMode {
    /// The gateway's own configured credential (or none).
    Configured(Option<Credential>),
    /// Each caller's `authorization` metadata, forwarded.
    Passthrough,
}

/// An `Authorization` header value for Confluence. `Debug` and `Display` redact it.
/// Shared, not copied: the configured credential goes with every call.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Credential(Arc<str>);

impl Credential {
    /// Basic auth, as Confluence Cloud takes an account email and API token.
    pub(crate) fn basic(email: &str, api_token: &str) -> Result<Self, &'static str> {
        if email.is_empty() || api_token.is_empty() {
            return Err("the email and the API token must not be empty");
        }
        Ok(Self(
            format!("Basic {}", STANDARD.encode(format!("{email}:{api_token}"))).into(),
        ))
    }

    /// A bearer token: a Data Center personal access token, or an OAuth 2.0 token.
    pub(crate) fn bearer(token: &str) -> Result<Self, &'static str> {
        Self::from_header(&format!("Bearer {token}"))
    }

    /// A caller's `authorization` metadata, forwarded as is once checked to be a
    /// `Basic` or `Bearer` credential fit for an HTTP header.
    pub(crate) fn from_header(value: &str) -> Result<Self, &'static str> {
        let value = value.trim();
        let (scheme, rest) = value
            .split_once(' ')
            .ok_or("expected 'Basic …' or 'Bearer …'")?;
        if !(scheme.eq_ignore_ascii_case("basic") || scheme.eq_ignore_ascii_case("bearer")) {
            return Err("only the Basic and Bearer schemes are accepted");
        }
        if rest.trim().is_empty() {
            return Err("the credential is empty");
        }
        if !value
            .bytes()
            .all(|b| b == b'\t' || (0x20..0x7f).contains(&b))
        {
            return Err("the credential holds characters a header cannot carry");
        }
        Ok(Self(value.into()))
    }

    /// The header value itself; only the upstream client may call this.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }

    /// A keyed hash of the credential (HMAC-SHA-256, hex): stable for one key, useless
    /// to anyone without it, and never the secret itself.
    pub(crate) fn fingerprint(&self, key: &FingerprintKey) -> String {
        let tag = hmac::sign(&key.0, self.0.as_bytes());
        to_hex(&tag.as_ref()[..16])
    }
}

/// Lower-case hex of `bytes`, without a per-byte allocation (this runs on every call).
pub(crate) fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Credential(<redacted>)")
    }
}

/// The key of credential fingerprints. Replicas that share a cache tier must share it.
pub(crate) struct FingerprintKey(hmac::Key);

impl FingerprintKey {
    /// A key from a configured secret.
    pub(crate) fn from_secret(secret: &[u8]) -> Self {
        Self(hmac::Key::new(hmac::HMAC_SHA256, secret))
    }

    /// A key for another purpose (`label`), derived from this one: as shared, or as
    /// random, as the salt it came from.
    pub(crate) fn derive(&self, label: &[u8]) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(hmac::sign(&self.0, label).as_ref());
        out
    }

    /// A fresh random key for this process, from the system's CSPRNG.
    pub(crate) fn random() -> Result<Self, RandomFailed> {
        hmac::Key::generate(hmac::HMAC_SHA256, &ring::rand::SystemRandom::new())
            .map(Self)
            .map_err(|_| RandomFailed)
    }
}

/// The system's random generator failed (ring says no more).
#[derive(Debug, thiserror::Error)]
#[error("the system random generator failed")]
pub(crate) struct RandomFailed;

impl fmt::Debug for FingerprintKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FingerprintKey(<redacted>)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_is_base64_of_email_and_token() {
        let c = Credential::basic("a@example.com", "tok").expect("valid");
        assert_eq!(c.expose(), "Basic YUBleGFtcGxlLmNvbTp0b2s=");
        assert_eq!(format!("{c:?}"), "Credential(<redacted>)");
    }

    #[test]
    fn header_values_are_checked() {
        assert!(Credential::from_header("Bearer abc").is_ok());
        assert!(Credential::from_header("basic abc").is_ok());
        assert!(Credential::from_header("Digest abc").is_err());
        assert!(Credential::from_header("Bearer ").is_err());
        assert!(Credential::from_header("Bearer a\u{7f}b").is_err());
    }

    #[test]
    fn fingerprints_depend_on_key_and_hide_the_secret() {
        let c = Credential::bearer("s3cret-token").expect("valid");
        assert!(Credential::bearer("with\nnewline").is_err());
        assert!(Credential::bearer("").is_err());
        let k1 = FingerprintKey::from_secret(b"one");
        let k2 = FingerprintKey::from_secret(b"two");
        assert_eq!(c.fingerprint(&k1), c.fingerprint(&k1));
        assert_ne!(c.fingerprint(&k1), c.fingerprint(&k2));
        assert_ne!(
            c.fingerprint(&k1),
            Credential::bearer("other").expect("valid").fingerprint(&k1)
        );
        // Neither the secret's bytes nor its unkeyed digest show through.
        let fp = c.fingerprint(&k1);
        assert!(!fp.contains(&to_hex(&c.expose().as_bytes()[..8])), "{fp}");
        let unkeyed = ring::digest::digest(&ring::digest::SHA256, c.expose().as_bytes());
        assert_ne!(fp, to_hex(&unkeyed.as_ref()[..16]));
        assert_eq!(c.fingerprint(&k1).len(), 32);
        assert_eq!(to_hex(&[0x00, 0x0f, 0xab, 0xff]), "000fabff");
    }
}
