//! The seat-lock fast path: the same cases against the in-process map and
//! against Redis (each Redis test under its own key prefix, removed after).

use std::sync::Arc;

use boxoffice::accelerators::redis_locks::RedisSettings;
use boxoffice::accelerators::{InProcessSeatLocks, LockOutcome, RedisSeatLocks, SeatLocks};
use boxoffice::domain::ids::{EventId, HoldId, SeatId};
use boxoffice::domain::time::{Clock, SystemClock};

#[path = "common/redis.rs"]
mod redis_support;
use redis_support::{redis_url, RedisPrefix};

fn seats(v: &[&str]) -> Vec<SeatId> {
    v.iter().map(|s| SeatId::parse(s).unwrap()).collect()
}

async fn all_or_nothing(locks: &dyn SeatLocks) {
    let e = EventId::generate();
    let (a, b) = (HoldId::generate(), HoldId::generate());
    let now = SystemClock.now();
    let until = now.plus_secs(60);
    assert_eq!(locks.try_lock(&e, &seats(&["A1", "A2"]), &a, until, now).await.unwrap(), LockOutcome::Acquired);
    assert_eq!(
        locks.try_lock(&e, &seats(&["A3", "A2"]), &b, until, now).await.unwrap(),
        LockOutcome::Conflict(seats(&["A2"]))
    );
    // The refused attempt locked nothing: A3 is free.
    assert_eq!(locks.try_lock(&e, &seats(&["A3"]), &b, until, now).await.unwrap(), LockOutcome::Acquired);
    // Locks are per event.
    let other = EventId::generate();
    assert_eq!(locks.try_lock(&other, &seats(&["A1"]), &b, until, now).await.unwrap(), LockOutcome::Acquired);
}

async fn release_is_compare_and_delete(locks: &dyn SeatLocks) {
    let e = EventId::generate();
    let (a, b) = (HoldId::generate(), HoldId::generate());
    let now = SystemClock.now();
    let until = now.plus_secs(60);
    locks.try_lock(&e, &seats(&["B1"]), &a, until, now).await.unwrap();
    // b's release of a seat it never had removes nothing.
    locks.release(&e, &seats(&["B1"]), &b).await.unwrap();
    assert!(matches!(locks.try_lock(&e, &seats(&["B1"]), &b, until, now).await.unwrap(), LockOutcome::Conflict(_)));
    // set() hands the seat to b (the database granted it to b).
    locks.set(&e, &seats(&["B1"]), &b, until, now).await.unwrap();
    locks.release(&e, &seats(&["B1"]), &a).await.unwrap();
    assert!(matches!(locks.try_lock(&e, &seats(&["B1"]), &a, until, now).await.unwrap(), LockOutcome::Conflict(_)));
    locks.release(&e, &seats(&["B1"]), &b).await.unwrap();
    assert_eq!(locks.try_lock(&e, &seats(&["B1"]), &a, until, now).await.unwrap(), LockOutcome::Acquired);
}

/// Many holds' locks released in one call (what the sweeper does): each seat
/// goes only if the hold paired with it still has it.
async fn release_each_checks_every_seat_against_its_own_hold(locks: &dyn SeatLocks) {
    let e = EventId::generate();
    let (a, b, c) = (HoldId::generate(), HoldId::generate(), HoldId::generate());
    let now = SystemClock.now();
    let until = now.plus_secs(60);
    locks.try_lock(&e, &seats(&["E1", "E2"]), &a, until, now).await.unwrap();
    locks.try_lock(&e, &seats(&["E3"]), &b, until, now).await.unwrap();
    locks.try_lock(&e, &seats(&["E4"]), &c, until, now).await.unwrap();
    let pairs = vec![
        (seats(&["E1"])[0].clone(), a.clone()),
        (seats(&["E2"])[0].clone(), a.clone()),
        (seats(&["E3"])[0].clone(), b.clone()),
        // E4 is c's, not a's: stays.
        (seats(&["E4"])[0].clone(), a.clone()),
    ];
    locks.release_each(&e, &pairs).await.unwrap();
    let fresh = HoldId::generate();
    assert_eq!(
        locks.try_lock(&e, &seats(&["E1", "E2", "E3"]), &fresh, until, now).await.unwrap(),
        LockOutcome::Acquired
    );
    assert_eq!(
        locks.try_lock(&e, &seats(&["E4"]), &fresh, until, now).await.unwrap(),
        LockOutcome::Conflict(seats(&["E4"]))
    );
}

async fn one_of_many_concurrent_lockers_wins(locks: Arc<dyn SeatLocks>) {
    let e = EventId::generate();
    let now = SystemClock.now();
    let barrier = Arc::new(tokio::sync::Barrier::new(100));
    let tasks: Vec<_> = (0..100)
        .map(|_| {
            let (locks, e, barrier) = (locks.clone(), e.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                locks.try_lock(&e, &seats(&["C7", "C8"]), &HoldId::generate(), now.plus_secs(60), now).await.unwrap()
            })
        })
        .collect();
    let mut wins = 0;
    for t in tasks {
        if t.await.unwrap() == LockOutcome::Acquired {
            wins += 1;
        }
    }
    assert_eq!(wins, 1);
}

#[tokio::test]
async fn in_process_locks_are_all_or_nothing() {
    all_or_nothing(&InProcessSeatLocks::new()).await;
}

#[tokio::test]
async fn in_process_release_is_compare_and_delete() {
    release_is_compare_and_delete(&InProcessSeatLocks::new()).await;
}

#[tokio::test]
async fn in_process_release_each_checks_every_seat_against_its_own_hold() {
    release_each_checks_every_seat_against_its_own_hold(&InProcessSeatLocks::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_concurrent_lockers_have_one_winner() {
    one_of_many_concurrent_lockers_wins(Arc::new(InProcessSeatLocks::new())).await;
}

async fn redis_locks(prefix: &RedisPrefix) -> RedisSeatLocks {
    RedisSeatLocks::connect(&[redis_url()], &prefix.0, RedisSettings::default())
        .await
        .expect("Redis is reachable (see .ci/run)")
}

#[tokio::test]
async fn redis_locks_are_all_or_nothing() {
    let p = RedisPrefix::new();
    all_or_nothing(&redis_locks(&p).await).await;
}

#[tokio::test]
async fn redis_release_is_compare_and_delete() {
    let p = RedisPrefix::new();
    release_is_compare_and_delete(&redis_locks(&p).await).await;
}

#[tokio::test]
async fn redis_release_each_checks_every_seat_against_its_own_hold() {
    let p = RedisPrefix::new();
    release_each_checks_every_seat_against_its_own_hold(&redis_locks(&p).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_concurrent_lockers_have_one_winner() {
    let p = RedisPrefix::new();
    one_of_many_concurrent_lockers_wins(Arc::new(redis_locks(&p).await)).await;
}

#[tokio::test]
async fn redis_keys_carry_the_event_hash_tag_and_expire() {
    let p = RedisPrefix::new();
    let locks = redis_locks(&p).await;
    let e = EventId::generate();
    let now = SystemClock.now();
    locks.try_lock(&e, &seats(&["D1"]), &HoldId::generate(), now.plus_secs(30), now).await.unwrap();
    let mut c = redis::Client::open(redis_url()).unwrap().get_connection().unwrap();
    let keys: Vec<String> = redis::cmd("KEYS").arg(format!("{}*", p.0)).query(&mut c).unwrap();
    assert_eq!(keys, vec![format!("{}{{{e}}}:seat:D1", p.0)]);
    let ttl: i64 = redis::cmd("PTTL").arg(&keys[0]).query(&mut c).unwrap();
    assert!(ttl > 0 && ttl <= 30_000, "every lock expires: {ttl}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_cluster_locks_behave_the_same() {
    let cluster = redis_support::OwnRedisCluster::start();
    let p = RedisPrefix::new();
    let locks = RedisSeatLocks::connect(&cluster.urls(), &p.0, RedisSettings::default()).await.unwrap();
    // Multi-key scripts only work when every key is in one slot: the
    // event's hash tag is what makes these pass on a cluster.
    all_or_nothing(&locks).await;
    release_is_compare_and_delete(&locks).await;
    one_of_many_concurrent_lockers_wins(Arc::new(locks)).await;
}

/// A script that fails inside Redis is that call's failure alone: Redis
/// answered, so it is not marked degraded and the next call goes through.
#[tokio::test]
async fn a_failing_script_does_not_mark_redis_degraded() {
    use boxoffice::accelerators::redis_conn::RedisConn;
    let conn = RedisConn::connect(&[redis_url()], RedisSettings::default()).await.unwrap();
    let prefix = RedisPrefix::new();
    let key = format!("{}probe", prefix.0);
    let bad = redis::Script::new("return redis.call('NO_SUCH_COMMAND')");
    assert!(conn.run(&bad, std::slice::from_ref(&key), &[]).await.is_err());
    assert!(!conn.is_degraded());
    let good = redis::Script::new("return redis.call('SET', KEYS[1], 'x')");
    assert!(conn.run(&good, &[key], &[]).await.is_ok());
}
