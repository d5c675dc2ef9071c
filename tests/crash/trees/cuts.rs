//! The crash states of a tree at one crash point: which state each file is
//! left in, and each file recovered (once, when several states share it).

use std::collections::BTreeSet;
use std::sync::Arc;

use vhdx::io::{CrashState, PendingOp};

use super::files::recover;
use super::model::IMAGES;
use super::ops::Workload;
use super::run::Coverage;
use crate::support::{crash_states, XorShift64Star};

/// Which crash state each file is left in.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Debug)]
pub enum Cut {
    Whole,
    Lost,
    /// The n-th of the file's other crash states.
    State(usize),
}

/// One file in one crash state, recovered.
#[derive(Clone)]
pub struct FileCut {
    pub recovered: Result<Arc<Vec<u8>>, String>,
    /// Names these bytes for the memo (`None`: not remembered).
    pub version: Option<u64>,
}

/// A file before the operation: as it was, and recovered.
pub struct Initial {
    pub raw: Arc<Vec<u8>>,
    pub cut: FileCut,
}

impl Initial {
    /// The files `raw` (in member order) before the operation; `recovered`
    /// when they need no recovery (a state already recovered).
    pub fn all(w: &Workload, raw: &[Arc<Vec<u8>>], recovered: bool) -> Vec<Initial> {
        (raw.iter().enumerate())
            .map(|(slot, b)| Initial {
                raw: b.clone(),
                cut: FileCut {
                    recovered: match recovered {
                        true => Ok(b.clone()),
                        false => recover(IMAGES[w.tree.members[slot]].name, b.to_vec()).map(Arc::new),
                    },
                    version: Some(slot as u64 * 3),
                },
            })
            .collect()
    }
}

impl FileCut {
    pub fn new(name: &str, raw: Vec<u8>, initial: &Initial, version: Option<u64>) -> FileCut {
        // An untouched file recovers as it did before the operation.
        if raw == *initial.raw {
            return initial.cut.clone();
        }
        FileCut { recovered: recover(name, raw).map(Arc::new), version }
    }
}

/// The crash states checked at one crash point (writes tear at `unit`
/// bytes, the images' logical sector: the unit the contract is about, as no
/// format can keep a sector old or new if the storage tears inside it):
/// everything, nothing, each file with unflushed operations whole with the
/// others lost, lost with the others whole, and in each of its other states
/// with the others whole; every file with unflushed writes in one of its
/// partial states at once; and random mixes of every file's states.
pub fn cuts(pending: &[Vec<PendingOp>], unit: u64, k: u64, c: &Coverage) -> (Vec<Vec<Cut>>, Vec<Vec<CrashState>>) {
    let n = pending.len();
    let states: Vec<Vec<CrashState>> = pending
        .iter()
        .map(|p| {
            let all = crash_states(p, unit, k, c.per_file);
            all.into_iter().filter(|x| !matches!(x, CrashState::AllPending | CrashState::DurableOnly)).collect()
        })
        .collect();
    let with_pending: Vec<usize> = (0..n).filter(|&i| !pending[i].is_empty()).collect();
    let mut seen: BTreeSet<Vec<Cut>> = BTreeSet::new();
    let mut order = Vec::new();
    let mut push = |v: Vec<Cut>| {
        if seen.insert(v.clone()) {
            order.push(v);
        }
    };
    push(vec![Cut::Whole; n]);
    if !with_pending.is_empty() {
        push(vec![Cut::Lost; n]);
    }
    for &f in &with_pending {
        let mut v = vec![Cut::Lost; n];
        v[f] = Cut::Whole;
        push(v);
        let mut v = vec![Cut::Whole; n];
        v[f] = Cut::Lost;
        push(v);
        for j in 0..states[f].len() {
            let mut v = vec![Cut::Whole; n];
            v[f] = Cut::State(j);
            push(v);
        }
    }
    if with_pending.len() > 1 {
        // Every file with unflushed writes in a partial state at once, the
        // last of each file's states first (the scattered ones: torn and
        // reordered), so that one power cut leaves several files mixed.
        let partial: Vec<usize> = with_pending.iter().copied().filter(|&f| !states[f].is_empty()).collect();
        if partial.len() > 1 {
            let most = partial.iter().map(|&f| states[f].len()).max().unwrap_or(0);
            for j in 0..most.min(c.mixes.max(1)) {
                let mut v = vec![Cut::Whole; n];
                for &f in &partial {
                    v[f] = Cut::State(states[f].len() - 1 - j % states[f].len());
                }
                push(v);
            }
        }
        let mut rng = XorShift64Star::new(k.wrapping_mul(7919).wrapping_add(13));
        for _ in 0..c.mixes {
            let v = (0..n)
                .map(|f| match pending[f].is_empty() {
                    true => Cut::Whole,
                    false => match rng.next() % (2 + states[f].len() as u64) {
                        0 => Cut::Whole,
                        1 => Cut::Lost,
                        j => Cut::State((j - 2) as usize),
                    },
                })
                .collect();
            push(v);
        }
    }
    (order, states)
}

pub fn describe(w: &Workload, cut: &[Cut], states: &[Vec<CrashState>]) -> String {
    if cut.iter().all(|c| *c == Cut::Whole) {
        return String::from("every file whole");
    }
    if cut.iter().all(|c| *c == Cut::Lost) {
        return String::from("every file's unflushed writes lost");
    }
    let parts: Vec<String> = cut
        .iter()
        .enumerate()
        .filter(|(_, c)| **c != Cut::Whole)
        .map(|(slot, c)| {
            let name = IMAGES[w.tree.members[slot]].name;
            match c {
                Cut::State(j) => format!("{name} {:?}", states[slot][*j]),
                _ => format!("{name} {c:?}"),
            }
        })
        .collect();
    format!("{}, the others whole", parts.join(", "))
}
