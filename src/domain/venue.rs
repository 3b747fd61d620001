//! Venues: an explicit seat map (sections of seats with coordinates and a
//! price category) plus general-admission areas with a capacity.
//!
//! A [`VenueDraft`] is what a client sends; [`Venue::from_draft`] is the only
//! way to get a [`Venue`], and it reports every problem it finds at once.

use std::collections::{BTreeSet, HashSet};

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::ids::{AreaId, Category, SeatId, VenueId};

/// The most seats one venue may have: a large stadium with room to spare.
pub const MAX_SEATS: usize = 200_000;
pub const MAX_GA_AREAS: usize = 100;
pub const MAX_GA_CAPACITY: i64 = 1_000_000;
const MAX_PROBLEMS_REPORTED: usize = 20;

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct VenueDraft {
    pub name: Option<String>,
    pub city: Option<String>,
    #[serde(default)]
    pub sections: Vec<SectionDraft>,
    #[serde(default)]
    pub ga_areas: Vec<GaAreaDraft>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SectionDraft {
    pub name: Option<String>,
    #[serde(default)]
    pub seats: Vec<SeatDraft>,
}

/// Every field is optional here so that a missing one is reported as an
/// `invalid_seat_map` problem naming the seat, not as a bare parse error.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SeatDraft {
    pub id: Option<String>,
    pub row: Option<String>,
    pub number: Option<i64>,
    pub category: Option<String>,
    pub x: Option<f64>,
    pub y: Option<f64>,
}

#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GaAreaDraft {
    pub id: Option<String>,
    pub name: Option<String>,
    pub category: Option<String>,
    pub capacity: Option<i64>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Venue {
    #[schema(value_type = String, example = "ven_0190c1e2a0b07c3d8e9f0a1b2c3d4e5f")]
    pub id: VenueId,
    pub name: String,
    pub city: String,
    pub sections: Vec<Section>,
    pub ga_areas: Vec<GaArea>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Section {
    pub name: String,
    pub seats: Vec<Seat>,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct Seat {
    #[schema(value_type = String, example = "A7")]
    pub id: SeatId,
    pub row: String,
    pub number: u32,
    #[schema(value_type = String, example = "standard")]
    pub category: Category,
    pub x: f64,
    pub y: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize, ToSchema)]
pub struct GaArea {
    #[schema(value_type = String, example = "floor")]
    pub id: AreaId,
    pub name: String,
    #[schema(value_type = String, example = "standard")]
    pub category: Category,
    pub capacity: u32,
}

/// Why a draft is not a venue: a list of human-readable problems.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidVenue(pub Vec<String>);

fn text(field: &str, v: &Option<String>, max: usize, problems: &mut Vec<String>) -> String {
    match v.as_deref().map(str::trim) {
        Some(s) if !s.is_empty() && s.chars().count() <= max && !s.chars().any(char::is_control) => s.to_owned(),
        Some(_) => {
            problems.push(format!("{field} must be 1-{max} printable characters"));
            String::new()
        }
        None => {
            problems.push(format!("{field} is required"));
            String::new()
        }
    }
}

impl Venue {
    pub fn from_draft(id: VenueId, d: VenueDraft) -> Result<Venue, InvalidVenue> {
        let mut p = Vec::new();
        let name = text("name", &d.name, 200, &mut p);
        let city = text("city", &d.city, 100, &mut p);
        let seat_count: usize = d.sections.iter().map(|s| s.seats.len()).sum();
        if seat_count == 0 && d.ga_areas.is_empty() {
            p.push("a venue needs at least one seat or one GA area".into());
        }
        if seat_count > MAX_SEATS {
            p.push(format!("a venue may have at most {MAX_SEATS} seats"));
            return Err(InvalidVenue(p));
        }
        if d.ga_areas.len() > MAX_GA_AREAS {
            p.push(format!("a venue may have at most {MAX_GA_AREAS} GA areas"));
            return Err(InvalidVenue(p));
        }

        let mut seen: HashSet<String> = HashSet::with_capacity(seat_count + d.ga_areas.len());
        let mut sections = Vec::with_capacity(d.sections.len());
        for (si, sd) in d.sections.into_iter().enumerate() {
            let sname = text(&format!("sections[{si}].name"), &sd.name, 100, &mut p);
            if sd.seats.is_empty() {
                p.push(format!("sections[{si}] has no seats"));
            }
            let mut seats = Vec::with_capacity(sd.seats.len());
            for (i, s) in sd.seats.into_iter().enumerate() {
                let at = format!("sections[{si}].seats[{i}]");
                let id = s.id.as_deref().and_then(SeatId::parse);
                match (&id, &s.id) {
                    (None, None) => p.push(format!("{at}.id is required")),
                    (None, Some(raw)) => {
                        p.push(format!("{at}.id {raw:?} must be 1-{} of A-Z a-z 0-9 - _", SeatId::MAX_LEN))
                    }
                    (Some(id), _) if !seen.insert(id.as_str().to_owned()) => {
                        p.push(format!("{at}.id {:?} is used twice", id.as_str()))
                    }
                    _ => {}
                }
                let row = text(&format!("{at}.row"), &s.row, 16, &mut p);
                let number = match s.number {
                    Some(n) if (1..=100_000).contains(&n) => n as u32,
                    Some(_) => {
                        p.push(format!("{at}.number must be 1-100000"));
                        0
                    }
                    None => {
                        p.push(format!("{at}.number is required"));
                        0
                    }
                };
                let category = s.category.as_deref().and_then(Category::parse);
                if category.is_none() {
                    p.push(format!("{at}.category is required: 1-32 of a-z 0-9 - _"));
                }
                let coord = |v: Option<f64>, axis: &str, p: &mut Vec<String>| match v {
                    Some(v) if v.is_finite() => v,
                    _ => {
                        p.push(format!("{at}.{axis} must be a finite number"));
                        0.0
                    }
                };
                let x = coord(s.x, "x", &mut p);
                let y = coord(s.y, "y", &mut p);
                if let (Some(id), Some(category)) = (id, category) {
                    seats.push(Seat { id, row, number, category, x, y });
                }
                if p.len() > MAX_PROBLEMS_REPORTED {
                    break;
                }
            }
            sections.push(Section { name: sname, seats });
            if p.len() > MAX_PROBLEMS_REPORTED {
                break;
            }
        }

        let mut ga_areas = Vec::with_capacity(d.ga_areas.len());
        for (i, a) in d.ga_areas.into_iter().enumerate() {
            let at = format!("ga_areas[{i}]");
            let id = a.id.as_deref().and_then(AreaId::parse);
            match &id {
                None => p.push(format!("{at}.id is required: 1-32 of A-Z a-z 0-9 - _")),
                Some(id) if !seen.insert(id.as_str().to_owned()) => {
                    p.push(format!("{at}.id {:?} is already used by a seat or area", id.as_str()))
                }
                _ => {}
            }
            let name = text(&format!("{at}.name"), &a.name, 100, &mut p);
            let category = a.category.as_deref().and_then(Category::parse);
            if category.is_none() {
                p.push(format!("{at}.category is required: 1-32 of a-z 0-9 - _"));
            }
            let capacity = match a.capacity {
                Some(c) if (1..=MAX_GA_CAPACITY).contains(&c) => c as u32,
                _ => {
                    p.push(format!("{at}.capacity must be 1-{MAX_GA_CAPACITY}"));
                    0
                }
            };
            if let (Some(id), Some(category)) = (id, category) {
                ga_areas.push(GaArea { id, name, category, capacity });
            }
        }

        if p.is_empty() {
            Ok(Venue { id, name, city, sections, ga_areas })
        } else {
            p.truncate(MAX_PROBLEMS_REPORTED);
            Err(InvalidVenue(p))
        }
    }

    pub fn seats(&self) -> impl Iterator<Item = (&Section, &Seat)> {
        self.sections.iter().flat_map(|s| s.seats.iter().map(move |seat| (s, seat)))
    }

    pub fn seat_count(&self) -> usize {
        self.sections.iter().map(|s| s.seats.len()).sum()
    }

    /// Every price category any seat or area uses.
    pub fn categories(&self) -> BTreeSet<Category> {
        self.seats().map(|(_, s)| s.category.clone()).chain(self.ga_areas.iter().map(|a| a.category.clone())).collect()
    }

    pub fn capacity(&self) -> u64 {
        self.seat_count() as u64 + self.ga_areas.iter().map(|a| u64::from(a.capacity)).sum::<u64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(id: &str) -> SeatDraft {
        SeatDraft {
            id: Some(id.into()),
            row: Some("A".into()),
            number: Some(1),
            category: Some("standard".into()),
            x: Some(1.0),
            y: Some(1.0),
        }
    }

    fn draft(seats: Vec<SeatDraft>) -> VenueDraft {
        VenueDraft {
            name: Some("Regal 1".into()),
            city: Some("Mumbai".into()),
            sections: vec![SectionDraft { name: Some("Orchestra".into()), seats }],
            ga_areas: vec![],
        }
    }

    #[test]
    fn a_well_formed_map_parses() {
        let v = Venue::from_draft(VenueId::generate(), draft(vec![seat("A1"), seat("A2")])).unwrap();
        assert_eq!(v.seat_count(), 2);
        assert_eq!(v.categories().len(), 1);
    }

    #[test]
    fn duplicate_ids_missing_coordinates_and_bad_categories_are_all_reported() {
        let mut no_x = seat("A2");
        no_x.x = None;
        let mut bad_cat = seat("A3");
        bad_cat.category = Some("VIP!".into());
        let err =
            Venue::from_draft(VenueId::generate(), draft(vec![seat("A1"), seat("A1"), no_x, bad_cat])).unwrap_err();
        let all = err.0.join("\n");
        assert!(all.contains("used twice"), "{all}");
        assert!(all.contains(".x must be"), "{all}");
        assert!(all.contains(".category"), "{all}");
    }

    #[test]
    fn ga_ids_may_not_collide_with_seat_ids_and_need_capacity() {
        let mut d = draft(vec![seat("floor")]);
        d.ga_areas.push(GaAreaDraft {
            id: Some("floor".into()),
            name: Some("Floor".into()),
            category: Some("standard".into()),
            capacity: Some(0),
        });
        let all = Venue::from_draft(VenueId::generate(), d).unwrap_err().0.join("\n");
        assert!(all.contains("already used"), "{all}");
        assert!(all.contains("capacity"), "{all}");
    }

    #[test]
    fn an_empty_venue_is_rejected() {
        let d = VenueDraft { name: Some("x".into()), city: Some("y".into()), sections: vec![], ga_areas: vec![] };
        assert!(Venue::from_draft(VenueId::generate(), d).is_err());
    }
}
