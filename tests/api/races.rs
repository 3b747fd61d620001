//! Real concurrency over real HTTP: many customers, released together by a
//! barrier, racing for the same seats. The database must pick exactly one
//! winner per seat, and no hold may be partial.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use reqwest::StatusCode;
use serde_json::json;

use crate::helpers::{race, sell_out, spawn_app_on, Backend, Reply};
use boxoffice::demo;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_fans_clicking_the_same_seat_get_exactly_one_hold() {
    thousand_fans_one_seat(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_fans_clicking_the_same_seat_get_exactly_one_hold_on_postgres() {
    thousand_fans_one_seat(Backend::Postgres).await;
}

async fn thousand_fans_one_seat(backend: Backend) {
    let app = Arc::new(spawn_app_on(backend).await);
    let event = app.demo_event(json!({})).await;
    let tokens = app.customers(1000).await;

    let results =
        race(std::slice::from_ref(&app), &tokens, |_| (format!("/v1/events/{event}/holds"), json!({"seats": ["A7"]})))
            .await;

    let winners: Vec<&(usize, Reply)> = results.iter().filter(|(_, r)| r.status == StatusCode::CREATED).collect();
    assert_eq!(winners.len(), 1, "exactly one 201");
    for (_, r) in results.iter().filter(|(_, r)| r.status != StatusCode::CREATED) {
        r.assert_problem(409, "seat_unavailable");
        assert_eq!(r.body["unavailable"], json!(["A7"]));
    }
    // The winner really has it, in the source of truth.
    let (winner_idx, winner) = winners[0];
    let hold = app.get(&format!("/v1/holds/{}", winner.id()), Some(&tokens[*winner_idx])).await;
    assert_eq!(hold.body["seats"], json!(["A7"]));
    assert_eq!(hold.body["status"], "held");
    let seats = app.seat_statuses(&event).await;
    assert_eq!(seats["A7"], "held");
    assert_eq!(seats.values().filter(|s| *s == "held").count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_fans_buying_best_available_sell_out_the_hall_exactly() {
    best_available_sell_out(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_hundred_fans_buying_best_available_sell_out_the_hall_exactly_on_postgres() {
    best_available_sell_out(Backend::Postgres).await;
}

async fn best_available_sell_out(backend: Backend) {
    let app = Arc::new(spawn_app_on(backend).await);
    let venue = app.create_venue(demo::sized_venue_json("Sellout Hall", "Springfield", 15, 20, 0)).await;
    let event = app.create_event(&venue, json!({"max_tickets_per_customer": 100})).await;
    let tokens = app.customers(500).await;
    let owner = sell_out(std::slice::from_ref(&app), &tokens, &event).await;
    assert_eq!(owner.len(), 300, "every seat was sold to someone");
    let statuses = app.seat_statuses(&event).await;
    assert_eq!(statuses.len(), 300);
    assert!(statuses.values().all(|s| s == "held"), "the seat map agrees: {statuses:?}");
    let a = app.get(&format!("/v1/events/{event}/availability"), None).await;
    assert_eq!(a.body["total"], 300);
    assert_eq!(a.body["held"], 300);
    assert_eq!(a.body["available"], 0);
    assert_eq!(a.body["sold"], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_multi_seat_holds_are_all_or_nothing() {
    overlapping_multi_seat(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overlapping_multi_seat_holds_are_all_or_nothing_on_postgres() {
    overlapping_multi_seat(Backend::Postgres).await;
}

async fn overlapping_multi_seat(backend: Backend) {
    let app = Arc::new(spawn_app_on(backend).await);
    let event = app.demo_event(json!({"max_tickets_per_customer": 100})).await;
    let tokens = app.customers(300).await;
    // 300 fans, each wanting 2-4 seats from the same 12: heavy overlap.
    let pool: Vec<String> = (1..=12).map(|n| format!("A{n}")).collect();
    let wants: Vec<Vec<String>> = (0..tokens.len())
        .map(|i| {
            let mut rng = StdRng::seed_from_u64(1_000 + i as u64);
            let n = rng.random_range(2..=4);
            let mut picked = BTreeSet::new();
            while picked.len() < n {
                picked.insert(pool[rng.random_range(0..pool.len())].clone());
            }
            picked.into_iter().collect()
        })
        .collect();

    let results = race(std::slice::from_ref(&app), &tokens, |i| {
        (format!("/v1/events/{event}/holds"), json!({"seats": wants[i]}))
    })
    .await;

    let mut owner: BTreeMap<String, usize> = BTreeMap::new();
    let mut winners = 0;
    for (i, r) in &results {
        match r.status {
            StatusCode::CREATED => {
                winners += 1;
                let got: Vec<String> =
                    r.body["seats"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
                assert_eq!(got, wants[*i], "a hold is exactly what was asked for");
                for s in got {
                    assert!(owner.insert(s.clone(), *i).is_none(), "{s} won twice");
                }
            }
            _ => {
                r.assert_problem(409, "seat_unavailable");
                let unavailable = r.body["unavailable"].as_array().unwrap();
                assert!(!unavailable.is_empty());
                for s in unavailable {
                    assert!(wants[*i].contains(&s.as_str().unwrap().to_owned()), "names only seats it asked for");
                }
            }
        }
    }
    assert!(winners >= 1);
    // No partial holds: a seat is held if and only if a winner asked for it.
    let statuses = app.seat_statuses(&event).await;
    for s in &pool {
        let expected = if owner.contains_key(s) { "held" } else { "available" };
        assert_eq!(statuses[s], expected, "seat {s}");
    }
    assert_eq!(statuses.values().filter(|s| *s == "held").count(), owner.len());
}
