//! HTTP-level tests: one binary, one module per area. Each test spawns its
//! own app on port 0 with its own database (see `helpers`).

mod audit;
mod auth;
mod bad_input;
mod catalog;
mod checkout;
mod cluster;
mod expiry;
mod helpers;
mod notifications;
mod queue;
mod races;
mod reconcile;
mod redis;
#[path = "../common/redis.rs"]
mod redis_support;
mod traffic;
