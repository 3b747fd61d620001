//! Customers and their session tokens.
//!
//! `POST /v1/sessions` has no proof of email ownership in the v1 contract,
//! so a session never grants access to another session's data: every
//! sign-in creates a new customer. The normalised email is kept as the
//! *buyer key* so purchase limits still count everything one email holds.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use rand::RngCore;
use sha2::{Digest, Sha256};

/// A syntactically valid email address, normalised to lowercase.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    pub const MAX_LEN: usize = 254;

    pub fn parse(s: &str) -> Option<Self> {
        let s = s.trim();
        if s.is_empty() || s.len() > Self::MAX_LEN {
            return None;
        }
        if s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (local, domain) = s.split_once('@')?;
        let domain_ok = !domain.is_empty()
            && !domain.contains('@')
            && domain.contains('.')
            && !domain.starts_with('.')
            && !domain.ends_with('.')
            && !domain.contains("..");
        (!local.is_empty() && local.len() <= 64 && domain_ok).then(|| Self(s.to_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn from_trusted(s: String) -> Self {
        Self(s)
    }
}

/// A bearer token handed to the client once. 256 random bits.
#[derive(Clone)]
pub struct SessionToken(String);

impl SessionToken {
    /// 32 bytes from the operating system's CSPRNG, base64url, with a prefix
    /// that makes leaked tokens easy to recognise in logs and scanners.
    pub fn generate() -> Self {
        Self(random_token("bxs"))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    pub fn hash(&self) -> TokenHash {
        TokenHash::of(&self.0)
    }
}

/// 256 bits from the operating system's CSPRNG: the one source of tokens
/// and of secret keys (ticket signing, admission tokens, draws).
pub fn random_secret() -> [u8; 32] {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    bytes
}

/// The one place tokens are minted: a [`random_secret`] in base64url,
/// after a short prefix naming the token's kind.
pub fn random_token(prefix: &str) -> String {
    format!("{prefix}_{}", URL_SAFE_NO_PAD.encode(random_secret()))
}

/// What the database keeps instead of the token: SHA-256 of it. A stolen
/// database does not yield usable tokens.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TokenHash(pub [u8; 32]);

impl TokenHash {
    pub fn of(presented: &str) -> Self {
        Self(Sha256::digest(presented.as_bytes()).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_junk_rejected() {
        assert_eq!(Email::parse(" Fan@Example.COM ").unwrap().as_str(), "fan@example.com");
        for bad in ["", "fan", "fan@", "@example.com", "fan@example", "a b@example.com", "fan@@x.com", "fan@x..com"] {
            assert!(Email::parse(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn tokens_are_long_random_and_distinct() {
        let a = SessionToken::generate();
        let b = SessionToken::generate();
        assert_ne!(a.expose(), b.expose());
        // 32 bytes base64url-encoded is 43 characters, plus the prefix.
        assert_eq!(a.expose().len(), 4 + 43);
        assert_eq!(a.hash(), TokenHash::of(a.expose()));
        assert_ne!(a.hash(), b.hash());
    }
}
