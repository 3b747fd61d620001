//! Pure types and rules: no I/O, no clock, no randomness except through
//! explicit constructors (`generate`). Everything here is unit-tested in
//! place.

pub mod admission;
pub mod customer;
pub mod draw;
pub mod event;
pub mod hold;
pub mod ids;
pub mod money;
pub mod order;
pub mod seating;
pub mod ticket;
pub mod time;
pub mod venue;
