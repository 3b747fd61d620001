//! Identifiers. Each is a newtype that can only be built by parsing or by
//! minting a fresh one, so a handler never passes a raw `String` onwards.
//!
//! Entity ids look like `evt_0190c1e2…`: a type prefix and a UUIDv7 in
//! simple hex. v7 keeps inserts index-friendly; ids are not secrets, every
//! read of private data is also checked against the caller's customer id.

use std::fmt;

use uuid::Uuid;

macro_rules! string_newtype_traits {
    ($name:ident) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl serde::Serialize for $name {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Deserializing parses, so stored or sent values are checked too.
        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::parse(&s).ok_or_else(|| serde::de::Error::custom(concat!("not a valid ", stringify!($name))))
            }
        }
    };
}

macro_rules! entity_id {
    ($(#[$doc:meta])* $name:ident, $prefix:literal) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const PREFIX: &'static str = $prefix;

            /// Mints a new, time-ordered id.
            pub fn generate() -> Self {
                Self(format!("{}_{}", $prefix, Uuid::now_v7().simple()))
            }

            /// Accepts exactly the shape [`Self::generate`] produces.
            pub fn parse(s: &str) -> Option<Self> {
                let hex = s.strip_prefix($prefix)?.strip_prefix('_')?;
                let ok = hex.len() == 32
                    && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
                ok.then(|| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            /// For ids read back from our own database.
            pub(crate) fn from_trusted(s: String) -> Self {
                Self(s)
            }
        }

        string_newtype_traits!($name);
    };
}

entity_id!(
    /// A venue: a seat map plus general-admission areas.
    VenueId, "ven");
entity_id!(
    /// An event at a venue; owns the per-seat inventory.
    EventId, "evt");
entity_id!(
    /// A hold on seats or GA places.
    HoldId, "hld");
entity_id!(
    /// A customer (one per session sign-in, see `domain::customer`).
    CustomerId, "cus");
entity_id!(
    /// An order: what a checkout of a hold becomes.
    OrderId, "ord");
entity_id!(
    /// One try at paying for an order; its id derives the gateway's
    /// idempotency key.
    AttemptId, "pay");
entity_id!(
    /// One ticket: one seat, or one GA place.
    TicketId, "tkt");

macro_rules! label {
    ($(#[$doc:meta])* $name:ident, $max:literal, $allowed:expr) => {
        $(#[$doc])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            pub const MAX_LEN: usize = $max;

            pub fn parse(s: &str) -> Option<Self> {
                let allowed: fn(u8) -> bool = $allowed;
                let ok = !s.is_empty() && s.len() <= $max && s.bytes().all(allowed);
                ok.then(|| Self(s.to_owned()))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }

            pub(crate) fn from_trusted(s: String) -> Self {
                Self(s)
            }
        }

        string_newtype_traits!($name);
    };
}

fn id_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

fn category_char(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
}

label!(
    /// A seat id within a venue, such as `A7`: 1–16 of `[A-Za-z0-9_-]`.
    SeatId, 16, id_char);
label!(
    /// A general-admission area id within a venue, such as `floor`.
    AreaId, 32, id_char);
label!(
    /// A price category, such as `premium`: 1–32 of `[a-z0-9_-]`.
    Category, 32, category_char);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_ids_parse_and_foreign_shapes_do_not() {
        let id = HoldId::generate();
        assert_eq!(HoldId::parse(id.as_str()), Some(id.clone()));
        assert!(EventId::parse(id.as_str()).is_none(), "prefix is checked");
        for bad in ["", "hld_", "hld_XYZ", "hld_0190", "hld_../../etc", "hld_0190c1e2000070008000000000000000x"] {
            assert!(HoldId::parse(bad).is_none(), "{bad:?} must not parse");
        }
    }

    #[test]
    fn labels_reject_empty_long_and_odd_characters() {
        assert!(SeatId::parse("A7").is_some());
        assert!(SeatId::parse("").is_none());
        assert!(SeatId::parse("A 7").is_none());
        assert!(SeatId::parse(&"A".repeat(17)).is_none());
        assert!(Category::parse("premium").is_some());
        assert!(Category::parse("Premium").is_none());
    }
}
