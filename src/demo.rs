//! The demo venue and event that `boxoffice demo` seeds, also used by the
//! tests and the benchmark so they exercise the same shapes a newcomer sees.

use serde_json::{json, Value};

use crate::domain::time::Timestamp;

/// Rows `A`..=`O`, 20 seats each (`A1`..`O20`); rows A–B are `premium`,
/// the rest `standard`; plus a 500-place GA area `floor`.
pub fn venue_json() -> Value {
    sized_venue_json("Demo Hall", "Springfield", 15, 20, 500)
}

/// A rectangular hall: `rows` rows of `per_row` seats, the first two rows
/// `premium`, and a GA area `floor` of `ga` places (none when 0).
pub fn sized_venue_json(name: &str, city: &str, rows: usize, per_row: usize, ga: u32) -> Value {
    let seats: Vec<Value> = (0..rows)
        .flat_map(|r| {
            let label = row_label(r);
            (1..=per_row).map(move |n| {
                json!({
                    "id": format!("{label}{n}"), "row": label.clone(), "number": n,
                    "category": if r < 2 { "premium" } else { "standard" },
                    "x": n, "y": r + 1,
                })
            })
        })
        .collect();
    let ga_areas: Vec<Value> = if ga > 0 {
        vec![json!({"id": "floor", "name": "Floor", "category": "standard", "capacity": ga})]
    } else {
        vec![]
    };
    json!({"name": name, "city": city, "sections": [{"name": "Main", "seats": seats}], "ga_areas": ga_areas})
}

/// `A`..`Z`, then `AA`, `AB`, ... for big halls.
pub fn row_label(i: usize) -> String {
    let letters = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ";
    if i < 26 {
        (letters[i] as char).to_string()
    } else {
        format!("{}{}", letters[(i / 26 - 1) % 26] as char, letters[i % 26] as char)
    }
}

/// An event at `venue_id` that went on sale an hour before `now` and
/// starts in a week.
pub fn event_json(venue_id: &str, now: Timestamp) -> Value {
    json!({
        "venue_id": venue_id,
        "title": "Opening Night",
        "category": "movie",
        "starts_at": now.plus_secs(7 * 24 * 3600).to_rfc3339(),
        "on_sale_at": Timestamp::from_millis(now.as_millis() - 3_600_000).to_rfc3339(),
        "currency": "USD",
        "prices": {"standard": 1500, "premium": 4000},
        "max_tickets_per_customer": 6,
        "hold_ttl_seconds": 300,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn demo_hall_has_300_seats_with_unique_ids() {
        let v = venue_json();
        let seats = v["sections"][0]["seats"].as_array().unwrap();
        assert_eq!(seats.len(), 300);
        let ids: std::collections::HashSet<_> = seats.iter().map(|s| s["id"].as_str().unwrap()).collect();
        assert_eq!(ids.len(), 300);
        assert!(ids.contains("A7") && ids.contains("O20"));
        assert_eq!(seats.iter().filter(|s| s["category"] == "premium").count(), 40);
    }

    #[test]
    fn row_labels_continue_past_z() {
        assert_eq!(row_label(0), "A");
        assert_eq!(row_label(25), "Z");
        assert_eq!(row_label(26), "AA");
        assert_eq!(row_label(27), "AB");
    }
}
