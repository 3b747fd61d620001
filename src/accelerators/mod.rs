//! Accelerators: fast paths and caches in front of the store. Each may lose
//! its state at any moment; correctness never depends on them.
//!
//! Embedded implementations live in-process. Scale-out (Redis) versions
//! implement the same traits.

pub mod catalog_cache;
pub mod redis_conn;
pub mod redis_locks;
pub mod redis_rooms;
pub mod seat_feed;
pub mod seat_locks;
pub mod waiting_room;

pub use catalog_cache::{CatalogCache, CatalogChange, RedisBus};
pub use redis_locks::RedisSeatLocks;
pub use seat_feed::{ChangeStatus, GaChange, SeatChange, SeatFeed};
pub use seat_locks::{InProcessSeatLocks, LockOutcome, LockStatus, SeatLocks};
