//! Tickets: a signed code that anyone holding the published public key can
//! check offline, and its QR rendering.
//!
//! A code is `BXT1.<claims>.<signature>`: the claims are compact JSON,
//! base64url without padding; the signature is Ed25519 over the bytes
//! `BXT1.<claims>`. A scanner with no network checks the signature and
//! reads the event and seat; the server's check-in then makes sure each
//! ticket is accepted once.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use serde::{Deserialize, Serialize};

const PREFIX: &str = "BXT1.";
/// Codes longer than this are refused before any decoding.
pub const MAX_CODE_LEN: usize = 1024;

/// What a ticket code says.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TicketClaims {
    /// The ticket id.
    #[serde(rename = "t")]
    pub ticket_id: String,
    #[serde(rename = "e")]
    pub event_id: String,
    /// The seat id, or `GA:<area>` for a general-admission place.
    #[serde(rename = "s")]
    pub seat: String,
}

/// Why a code is not a genuine ticket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("not a genuine ticket code")]
pub struct InvalidCode;

/// The signing half, which only the servers hold.
#[derive(Clone)]
pub struct TicketSigner {
    key: SigningKey,
}

impl TicketSigner {
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        Self { key: SigningKey::from_bytes(seed) }
    }

    /// From a base64url seed, as configured or stored.
    pub fn from_base64_seed(b64: &str) -> Option<Self> {
        let seed: [u8; 32] = URL_SAFE_NO_PAD.decode(b64.trim()).ok()?.try_into().ok()?;
        Some(Self::from_seed(&seed))
    }

    pub fn sign(&self, claims: &TicketClaims) -> String {
        // Serializing three strings cannot fail.
        let json = serde_json::to_vec(claims).unwrap_or_default();
        let signed = format!("{PREFIX}{}", URL_SAFE_NO_PAD.encode(json));
        let signature = self.key.sign(signed.as_bytes());
        format!("{signed}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
    }

    pub fn verifier(&self) -> TicketVerifier {
        TicketVerifier { key: self.key.verifying_key() }
    }
}

/// The checking half, safe to publish.
#[derive(Clone, Debug)]
pub struct TicketVerifier {
    key: VerifyingKey,
}

impl TicketVerifier {
    /// From the published base64url public key.
    pub fn from_public_key(b64: &str) -> Option<Self> {
        let bytes: [u8; 32] = URL_SAFE_NO_PAD.decode(b64).ok()?.try_into().ok()?;
        Some(Self { key: VerifyingKey::from_bytes(&bytes).ok()? })
    }

    /// The public key, base64url without padding.
    pub fn public_key(&self) -> String {
        URL_SAFE_NO_PAD.encode(self.key.as_bytes())
    }

    pub fn verify(&self, code: &str) -> Result<TicketClaims, InvalidCode> {
        if code.len() > MAX_CODE_LEN {
            return Err(InvalidCode);
        }
        let (signed, signature) = code.rsplit_once('.').ok_or(InvalidCode)?;
        let claims = signed.strip_prefix(PREFIX).ok_or(InvalidCode)?;
        let signature: [u8; 64] =
            URL_SAFE_NO_PAD.decode(signature).map_err(|_| InvalidCode)?.try_into().map_err(|_| InvalidCode)?;
        self.key.verify(signed.as_bytes(), &Signature::from_bytes(&signature)).map_err(|_| InvalidCode)?;
        let json = URL_SAFE_NO_PAD.decode(claims).map_err(|_| InvalidCode)?;
        serde_json::from_slice(&json).map_err(|_| InvalidCode)
    }
}

/// The code as a QR symbol in SVG.
pub fn qr_svg(code: &str) -> Option<String> {
    let qr = qrcode::QrCode::new(code.as_bytes()).ok()?;
    Some(qr.render::<qrcode::render::svg::Color<'_>>().min_dimensions(240, 240).quiet_zone(true).build())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> TicketClaims {
        TicketClaims { ticket_id: "tkt_1".into(), event_id: "evt_1".into(), seat: "A7".into() }
    }

    #[test]
    fn a_signed_code_verifies_with_the_published_key_alone() {
        let signer = TicketSigner::from_seed(&crate::domain::customer::random_secret());
        let code = signer.sign(&claims());
        let published = signer.verifier().public_key();
        let offline = TicketVerifier::from_public_key(&published).unwrap();
        assert_eq!(offline.verify(&code), Ok(claims()));
    }

    #[test]
    fn tampered_forged_and_malformed_codes_are_refused() {
        let signer = TicketSigner::from_seed(&[7; 32]);
        let verifier = signer.verifier();
        let code = signer.sign(&claims());
        // Another seat, same signature.
        let (signed, sig) = code.rsplit_once('.').unwrap();
        let mut other = claims();
        other.seat = "A8".into();
        let other_signed = signer.sign(&other);
        let swapped = format!("{}.{sig}", other_signed.rsplit_once('.').unwrap().0);
        assert_eq!(verifier.verify(&swapped), Err(InvalidCode));
        // Signed by someone else's key.
        let forged = TicketSigner::from_seed(&[8; 32]).sign(&claims());
        assert_eq!(verifier.verify(&forged), Err(InvalidCode));
        // A flipped character anywhere.
        for i in [6, signed.len() + 3] {
            let mut bytes = code.clone().into_bytes();
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            assert_eq!(verifier.verify(&String::from_utf8(bytes).unwrap()), Err(InvalidCode), "byte {i}");
        }
        for junk in ["", "BXT1.", "BXT1..", "nonsense", &"x".repeat(5000), &format!("BXT2{}", &code[4..])] {
            assert_eq!(verifier.verify(junk), Err(InvalidCode), "{junk:.20}");
        }
    }

    #[test]
    fn the_same_seed_signs_the_same_way_and_keys_round_trip() {
        let a = TicketSigner::from_seed(&[3; 32]);
        let b = TicketSigner::from_seed(&[3; 32]);
        assert_eq!(a.sign(&claims()), b.sign(&claims()), "Ed25519 is deterministic");
        assert!(TicketVerifier::from_public_key("not-a-key").is_none());
    }

    #[test]
    fn the_qr_code_is_an_svg() {
        let svg = qr_svg(&TicketSigner::from_seed(&[1; 32]).sign(&claims())).unwrap();
        assert!(svg.starts_with("<?xml") && svg.contains("<svg"), "{svg:.60}");
    }
}
