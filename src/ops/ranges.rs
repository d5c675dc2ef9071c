//! Sorted, disjoint byte ranges `(start, length)`: union and difference.
//! Change sets of differencing disks are such lists.

use alloc::vec::Vec;

/// A sorted list of disjoint, non-adjacent ranges `(start, length)`.
pub type Ranges = Vec<(u64, u64)>;

/// Sorts and merges overlapping or touching ranges.
pub fn normalize(mut r: Ranges) -> Ranges {
    r.retain(|&(_, l)| l > 0);
    r.sort_unstable();
    let mut out: Ranges = Vec::with_capacity(r.len());
    for (s, l) in r {
        match out.last_mut() {
            Some((ps, pl)) if *ps + *pl >= s => *pl = (*pl).max(s + l - *ps),
            _ => out.push((s, l)),
        }
    }
    out
}

/// Everything in `a` or `b`.
pub fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let mut all = a.to_vec();
    all.extend_from_slice(b);
    normalize(all)
}

/// Everything in `a` but not in `b` (both normalized).
pub fn difference(a: &[(u64, u64)], b: &[(u64, u64)]) -> Ranges {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, l) in a {
        let mut cur = s;
        let end = s + l;
        while j < b.len() && b[j].0 + b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < end && k < b.len() && b[k].0 < end {
            let (bs, bl) = b[k];
            if bs > cur {
                out.push((cur, bs - cur));
            }
            cur = cur.max(bs + bl);
            k += 1;
        }
        if cur < end {
            out.push((cur, end - cur));
        }
    }
    out
}

/// Total bytes covered.
pub fn total(r: &[(u64, u64)]) -> u64 {
    r.iter().map(|&(_, l)| l).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_operations_match_a_bitmap_model() {
        let a = normalize(alloc::vec![(0, 10), (5, 10), (30, 5), (40, 1)]);
        assert_eq!(a, [(0, 15), (30, 5), (40, 1)]);
        let model = |r: &[(u64, u64)]| {
            let mut m = [false; 64];
            for &(s, l) in r {
                for x in s..s + l {
                    m[x as usize] = true;
                }
            }
            m
        };
        // b cutting inside a's ranges, b ending exactly where a range of a
        // ends or starts, b covering a whole range of a, b empty.
        for b in [
            alloc::vec![(3, 4), (14, 20)],
            alloc::vec![(10, 5), (30, 2), (40, 1)],
            alloc::vec![(0, 15), (35, 5)],
            alloc::vec![],
        ] {
            let b = normalize(b);
            let (ma, mb) = (model(&a), model(&b));
            let (u, d) = (union(&a, &b), difference(&a, &b));
            let (mu, md) = (model(&u), model(&d));
            for x in 0..64 {
                assert_eq!(mu[x], ma[x] || mb[x]);
                assert_eq!(md[x], ma[x] && !mb[x], "difference at {x} with {b:?}");
            }
            // Both are Ranges: sorted, disjoint, non-adjacent, no empty range.
            assert_eq!(u, normalize(u.clone()), "union with {b:?}");
            assert_eq!(d, normalize(d.clone()), "difference with {b:?}");
        }
    }
}
