//! Best-available seat selection: a pure function from the seats that are
//! free right now to the seats a fan should get.
//!
//! Preference, in order:
//! 1. `count` adjacent seats (same section and row, consecutive numbers),
//!    trying categories from the most expensive down;
//! 2. failing that, the best individual seats of the first category that
//!    has room, then across categories.
//!
//! Within a category a block is better when it is nearer the front (lower
//! `y`) and then nearer the centre (its mean `x` closest to the middle of
//! the free seats).

use super::ids::{Category, SeatId};

#[derive(Clone, Debug)]
pub struct FreeSeat {
    pub id: SeatId,
    pub section: String,
    pub row: String,
    pub number: u32,
    pub category: Category,
    pub x: f64,
    pub y: f64,
}

/// Picks `count` seats, or `None` when fewer than `count` are free in the
/// allowed categories. `categories` is in order of preference.
pub fn pick_best(free: &[FreeSeat], count: usize, categories: &[Category]) -> Option<Vec<SeatId>> {
    if count == 0 {
        return None;
    }
    let in_cat = |c: &Category| free.iter().filter(move |s| &s.category == c).collect::<Vec<_>>();

    for c in categories {
        if let Some(block) = best_block(&in_cat(c), count) {
            return Some(block);
        }
    }
    for c in categories {
        let seats = in_cat(c);
        if seats.len() >= count {
            return Some(best_singles(seats, count));
        }
    }
    let all: Vec<&FreeSeat> = free.iter().filter(|s| categories.contains(&s.category)).collect();
    (all.len() >= count).then(|| best_singles(all, count))
}

fn centre(seats: &[&FreeSeat]) -> f64 {
    let (lo, hi) = seats.iter().fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), s| (lo.min(s.x), hi.max(s.x)));
    (lo + hi) / 2.0
}

fn score(block: &[&FreeSeat], cx: f64) -> (f64, f64) {
    let n = block.len() as f64;
    let y = block.iter().map(|s| s.y).sum::<f64>() / n;
    let x = block.iter().map(|s| s.x).sum::<f64>() / n;
    (y, (x - cx).abs())
}

fn better(a: (f64, f64), b: (f64, f64)) -> bool {
    a.0 < b.0 || (a.0 == b.0 && a.1 < b.1)
}

fn best_block(seats: &[&FreeSeat], count: usize) -> Option<Vec<SeatId>> {
    if seats.len() < count {
        return None;
    }
    let cx = centre(seats);
    let mut sorted: Vec<&FreeSeat> = seats.to_vec();
    sorted.sort_by(|a, b| (&a.section, &a.row, a.number).cmp(&(&b.section, &b.row, b.number)));

    let mut best: Option<(&[&FreeSeat], (f64, f64))> = None;
    let mut run_start = 0;
    for i in 0..sorted.len() {
        let continues = i > run_start && {
            let (p, s) = (sorted[i - 1], sorted[i]);
            p.section == s.section && p.row == s.row && p.number + 1 == s.number
        };
        if !continues {
            run_start = i;
        }
        if i + 1 - run_start >= count {
            let window = &sorted[i + 1 - count..=i];
            let sc = score(window, cx);
            if best.is_none_or(|(_, b)| better(sc, b)) {
                best = Some((window, sc));
            }
        }
    }
    best.map(|(w, _)| w.iter().map(|s| s.id.clone()).collect())
}

fn best_singles(mut seats: Vec<&FreeSeat>, count: usize) -> Vec<SeatId> {
    let cx = centre(&seats);
    seats.sort_by(|a, b| {
        let (sa, sb) = (score(&[a], cx), score(&[b], cx));
        sa.0.total_cmp(&sb.0).then(sa.1.total_cmp(&sb.1))
    });
    seats.into_iter().take(count).map(|s| s.id.clone()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seat(row: &str, n: u32, cat: &str) -> FreeSeat {
        let y = f64::from(row.as_bytes()[0] - b'A' + 1);
        FreeSeat {
            id: SeatId::parse(&format!("{row}{n}")).unwrap(),
            section: "Main".into(),
            row: row.into(),
            number: n,
            category: Category::parse(cat).unwrap(),
            x: f64::from(n),
            y,
        }
    }

    fn ids(v: &[SeatId]) -> Vec<&str> {
        v.iter().map(SeatId::as_str).collect()
    }

    fn cats(v: &[&str]) -> Vec<Category> {
        v.iter().map(|c| Category::parse(c).unwrap()).collect()
    }

    #[test]
    fn prefers_a_central_adjacent_block_in_the_front_row() {
        let free: Vec<_> = (1..=10).map(|n| seat("A", n, "std")).chain((1..=10).map(|n| seat("B", n, "std"))).collect();
        let got = pick_best(&free, 2, &cats(&["std"])).unwrap();
        assert_eq!(ids(&got), ["A5", "A6"]);
    }

    #[test]
    fn skips_a_row_without_a_long_enough_run() {
        // Row A has only gaps of one; row B has a pair.
        let free = vec![
            seat("A", 1, "std"),
            seat("A", 3, "std"),
            seat("A", 5, "std"),
            seat("B", 7, "std"),
            seat("B", 8, "std"),
        ];
        assert_eq!(ids(&pick_best(&free, 2, &cats(&["std"])).unwrap()), ["B7", "B8"]);
    }

    #[test]
    fn best_category_first_then_falls_back_to_singles() {
        let free = vec![seat("A", 1, "premium"), seat("A", 3, "premium"), seat("C", 1, "std"), seat("C", 2, "std")];
        // Premium has no pair, standard does: adjacency wins.
        assert_eq!(ids(&pick_best(&free, 2, &cats(&["premium", "std"])).unwrap()), ["C1", "C2"]);
        // Only premium allowed: two single premium seats.
        let got = pick_best(&free, 2, &cats(&["premium"])).unwrap();
        assert_eq!(got.len(), 2);
        assert!(ids(&got).iter().all(|s| s.starts_with('A')));
        // Three seats exist only across categories.
        assert_eq!(pick_best(&free, 3, &cats(&["premium", "std"])).unwrap().len(), 3);
        assert!(pick_best(&free, 5, &cats(&["premium", "std"])).is_none());
    }

    #[test]
    fn sections_do_not_join_into_one_block() {
        let mut a = seat("A", 1, "std");
        a.section = "Left".into();
        let b = seat("A", 2, "std");
        let got = pick_best(&[a, b], 2, &cats(&["std"])).unwrap();
        assert_eq!(got.len(), 2, "falls back to singles rather than failing");
    }
}
