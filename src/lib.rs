//! boxoffice: ticket booking that sells every seat exactly once.
//!
//! The layers, from the inside out (see ARCHITECTURE.md):
//! [`domain`] → [`store`] → [`accelerators`] → [`booking`] → [`jobs`] → [`api`].

pub mod accelerators;
pub mod api;
pub mod app;
pub mod audit;
pub mod booking;
pub mod cli;
pub mod config;
pub mod demo;
pub mod domain;
pub mod jobs;
pub mod payments;
pub mod store;
pub mod telemetry;
