//! A stable sort for the few short lists the Worker orders (a queue batch, an outbox
//! round, an object's members: at most a few hundred items). Insertion sort: quadratic,
//! which at these lengths costs less than a D1 round trip, and one small function per
//! element type where `slice::sort_by` compiles several kilobytes of sorting machinery.

use std::cmp::Ordering;

/// Sorts `items` as `slice::sort_by` would: by `compare`, equal items kept in their order.
pub(crate) fn sort_by<T>(items: &mut [T], mut compare: impl FnMut(&T, &T) -> Ordering) {
    for i in 1..items.len() {
        let mut j = i;
        while j > 0 && compare(&items[j - 1], &items[j]) == Ordering::Greater {
            items.swap(j - 1, j);
            j -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_as_the_standard_stable_sort_does() {
        // Pairs whose first member repeats: equal keys must keep their order.
        let mut seed = 0x2545_f491_4f6c_dd1d_u64;
        for len in 0..40 {
            let items: Vec<(u8, usize)> = (0..len)
                .map(|i| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    ((seed % 5) as u8, i)
                })
                .collect();
            let mut ours = items.clone();
            sort_by(&mut ours, |a, b| a.0.cmp(&b.0));
            let mut std = items;
            std.sort_by_key(|a| a.0);
            assert_eq!(ours, std);
        }
    }
}
