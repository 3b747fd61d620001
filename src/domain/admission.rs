//! Admission tokens: what a fan let out of a waiting room shows to hold
//! seats and check out. A token is bound to one customer and one event and
//! carries an expiry; it is HMAC-SHA256-signed with a key only the servers
//! hold, so any node can check it without asking anyone.
//!
//! Form: `<base64url claims JSON>.<base64url MAC over the claims part>`.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use super::ids::{CustomerId, EventId};
use super::time::Timestamp;

/// Tokens longer than this are refused before any decoding.
const MAX_TOKEN_LEN: usize = 512;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AdmissionClaims {
    #[serde(rename = "c")]
    pub customer_id: String,
    #[serde(rename = "e")]
    pub event_id: String,
    /// Expiry, epoch milliseconds.
    #[serde(rename = "x")]
    pub expires_at: i64,
    /// The queue position it was issued for.
    #[serde(rename = "p")]
    pub position: u64,
}

/// Why a token does not admit this request. All of them answer 403
/// `not_admitted`; the reason is for logs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NotAdmitted {
    #[error("no admission token")]
    Missing,
    #[error("the admission token is malformed or forged")]
    Invalid,
    #[error("the admission token has expired")]
    Expired,
    #[error("the admission token belongs to another customer")]
    OtherCustomer,
    #[error("the admission token is for another event")]
    OtherEvent,
}

/// The servers' signing key for admission tokens.
#[derive(Clone)]
pub struct AdmissionKey([u8; 32]);

impl AdmissionKey {
    pub fn new(secret: [u8; 32]) -> Self {
        Self(secret)
    }

    fn mac(&self) -> Hmac<Sha256> {
        // HMAC takes keys of any length; this cannot fail.
        <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    pub fn issue(&self, claims: &AdmissionClaims) -> String {
        let body = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).unwrap_or_default());
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        format!("{body}.{}", URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes()))
    }

    /// The claims of a genuine, unexpired token for this customer and event.
    pub fn verify(
        &self,
        token: Option<&str>,
        customer: &CustomerId,
        event: &EventId,
        now: Timestamp,
    ) -> Result<AdmissionClaims, NotAdmitted> {
        let token = token.map(str::trim).filter(|t| !t.is_empty()).ok_or(NotAdmitted::Missing)?;
        if token.len() > MAX_TOKEN_LEN {
            return Err(NotAdmitted::Invalid);
        }
        let (body, tag) = token.split_once('.').ok_or(NotAdmitted::Invalid)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| NotAdmitted::Invalid)?;
        let mut mac = self.mac();
        mac.update(body.as_bytes());
        mac.verify_slice(&tag).map_err(|_| NotAdmitted::Invalid)?;
        let json = URL_SAFE_NO_PAD.decode(body).map_err(|_| NotAdmitted::Invalid)?;
        let claims: AdmissionClaims = serde_json::from_slice(&json).map_err(|_| NotAdmitted::Invalid)?;
        if claims.customer_id != customer.as_str() {
            return Err(NotAdmitted::OtherCustomer);
        }
        if claims.event_id != event.as_str() {
            return Err(NotAdmitted::OtherEvent);
        }
        if claims.expires_at <= now.as_millis() {
            return Err(NotAdmitted::Expired);
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(c: &CustomerId, e: &EventId, exp: i64) -> AdmissionClaims {
        AdmissionClaims { customer_id: c.to_string(), event_id: e.to_string(), expires_at: exp, position: 7 }
    }

    #[test]
    fn a_token_admits_its_customer_to_its_event_until_it_expires() {
        let key = AdmissionKey::new([5; 32]);
        let (fan, other) = (CustomerId::generate(), CustomerId::generate());
        let (show, other_show) = (EventId::generate(), EventId::generate());
        let token = key.issue(&claims(&fan, &show, 10_000));
        let at = Timestamp::from_millis;
        assert_eq!(key.verify(Some(&token), &fan, &show, at(9_999)).unwrap().position, 7);
        assert_eq!(key.verify(Some(&token), &fan, &show, at(10_000)), Err(NotAdmitted::Expired));
        assert_eq!(key.verify(Some(&token), &other, &show, at(0)), Err(NotAdmitted::OtherCustomer));
        assert_eq!(key.verify(Some(&token), &fan, &other_show, at(0)), Err(NotAdmitted::OtherEvent));
        assert_eq!(key.verify(None, &fan, &show, at(0)), Err(NotAdmitted::Missing));
        assert_eq!(key.verify(Some("  "), &fan, &show, at(0)), Err(NotAdmitted::Missing));
    }

    #[test]
    fn forged_and_altered_tokens_are_refused() {
        let key = AdmissionKey::new([5; 32]);
        let (fan, show) = (CustomerId::generate(), EventId::generate());
        let genuine = key.issue(&claims(&fan, &show, 10_000));
        let forged = AdmissionKey::new([6; 32]).issue(&claims(&fan, &show, 10_000));
        let now = Timestamp::from_millis(0);
        assert_eq!(key.verify(Some(&forged), &fan, &show, now), Err(NotAdmitted::Invalid));
        // A longer expiry, re-encoded but with the old MAC.
        let tag = genuine.split_once('.').unwrap().1;
        let longer = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&claims(&fan, &show, i64::MAX)).unwrap());
        assert_eq!(key.verify(Some(&format!("{longer}.{tag}")), &fan, &show, now), Err(NotAdmitted::Invalid));
        for junk in ["x", "a.b", "....", &"y".repeat(600)] {
            assert_eq!(key.verify(Some(junk), &fan, &show, now), Err(NotAdmitted::Invalid), "{junk:.10}");
        }
    }
}
