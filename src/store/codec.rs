//! Column encodings shared by every backend, so both store the same JSON
//! shapes for the few structured columns.

use std::collections::BTreeMap;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::domain::event::WaitingRoom;
use crate::domain::ids::{Category, SeatId};
use crate::domain::time::Timestamp;

pub(crate) fn encode_prices(p: &BTreeMap<Category, i64>) -> String {
    let m: BTreeMap<&str, i64> = p.iter().map(|(k, v)| (k.as_str(), *v)).collect();
    serde_json::to_string(&m).unwrap_or_else(|_| "{}".into())
}

pub(crate) fn decode_prices(s: &str) -> anyhow::Result<BTreeMap<Category, i64>> {
    let m: BTreeMap<String, i64> = serde_json::from_str(s).context("decoding event prices")?;
    Ok(m.into_iter().map(|(k, v)| (Category::from_trusted(k), v)).collect())
}

#[derive(Serialize, Deserialize)]
struct WaitingRoomColumn {
    enabled: bool,
    admission_rate_per_minute: u32,
    max_active_shoppers: u32,
    prequeue_opens_at: Option<i64>,
}

pub(crate) fn encode_waiting_room(w: &Option<WaitingRoom>) -> Option<String> {
    w.as_ref().map(|w| {
        serde_json::to_string(&WaitingRoomColumn {
            enabled: w.enabled,
            admission_rate_per_minute: w.admission_rate_per_minute,
            max_active_shoppers: w.max_active_shoppers,
            prequeue_opens_at: w.prequeue_opens_at.map(Timestamp::as_millis),
        })
        .unwrap_or_default()
    })
}

pub(crate) fn decode_waiting_room(s: Option<&str>) -> anyhow::Result<Option<WaitingRoom>> {
    let Some(s) = s else { return Ok(None) };
    let c: WaitingRoomColumn = serde_json::from_str(s).context("decoding waiting room")?;
    Ok(Some(WaitingRoom {
        enabled: c.enabled,
        admission_rate_per_minute: c.admission_rate_per_minute,
        max_active_shoppers: c.max_active_shoppers,
        prequeue_opens_at: c.prequeue_opens_at.map(Timestamp::from_millis),
    }))
}

pub(crate) fn encode_seats(seats: &[SeatId]) -> String {
    let v: Vec<&str> = seats.iter().map(SeatId::as_str).collect();
    serde_json::to_string(&v).unwrap_or_else(|_| "[]".into())
}

pub(crate) fn decode_seats(s: &str) -> anyhow::Result<Vec<SeatId>> {
    let v: Vec<String> = serde_json::from_str(s).context("decoding hold seats")?;
    Ok(v.into_iter().map(SeatId::from_trusted).collect())
}
