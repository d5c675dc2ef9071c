//! Finishing an interrupted operation, and checking its result: the same
//! operation run again (after `recover_merge`, for some merge states), one
//! more run after that, and `check --repair` of real files.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use vhdx::ops::merge::{recover_merge, MergeRun, Recovery};

use super::check::{check_files, Expect, Files, Memo};
use super::files::{opener_of, VecStorage};
use super::model::{read_tree, write_tree, IMAGES};
use super::ops::Workload;
use crate::verify::panic_text;

/// Checks `files` against `want`, and against the operation's result
/// checks when `result`.
pub fn verify(
    w: &Workload,
    files: &Files<'_>,
    want: &BTreeMap<usize, Expect>,
    result: bool,
    memo: Option<&mut Memo>,
) -> Vec<String> {
    let r = catch_unwind(AssertUnwindSafe(|| {
        let mut v = check_files(files, want, w.model.sector as usize, memo);
        if result {
            v.extend(w.check_result(files).err());
        }
        v
    }));
    r.unwrap_or_else(|p| vec![format!("the check panics — {}", panic_text(p))])
}

/// How a crash state is finished.
#[derive(Clone, Copy)]
pub struct How {
    /// A merge: `recover_merge` first (what `check --repair` runs), which
    /// must leave the tree exactly rolled back or finished.
    pub recover_first: bool,
    /// Then, once finished, one more run: a merge must find itself done and
    /// change no byte; another operation must succeed and keep its result.
    pub again: bool,
}

/// Finishes the operation, without a fault, on `bytes` (recovered files) as
/// `how` says, and checks its result.
///
/// A re-run that refuses is accepted only for an operation other than a
/// merge, and only when it had completed (every file presents its result);
/// a merge must say it was done.
pub fn finish(w: &Workload, bytes: &[Arc<Vec<u8>>], how: How) -> Vec<String> {
    let storages: Vec<VecStorage> = bytes.iter().map(|b| VecStorage::new(b.clone())).collect();
    let paths = w.tree.members.iter().map(|&i| w.tree.path(i));
    let opener = opener_of(paths.zip(storages.iter().cloned()).collect(), |_| {});
    let now = || -> Vec<Arc<Vec<u8>>> { storages.iter().map(|s| s.bytes()).collect() };
    let check = |want: &BTreeMap<usize, Expect>, what: &str| -> Vec<String> {
        let v = verify(w, &Files::new(&w.tree, &w.tree.root, now()), want, true, None);
        v.into_iter().map(|v| format!("{what}: {v}")).collect()
    };
    let run = || catch_unwind(AssertUnwindSafe(|| w.run(&w.tree.root, Some(opener.clone()))));
    if let (true, Some(options), Some(rolled_back)) =
        (how.recover_first, w.merge_options(Some(opener.clone())), &w.rolled_back)
    {
        let child = w.tree.path(w.subject());
        let v = match catch_unwind(AssertUnwindSafe(|| recover_merge(&child, &options))) {
            Err(p) => vec![format!("recover_merge panics — {}", panic_text(p))],
            Ok(Err(e)) => vec![format!("recover_merge fails ({:?}) — {e}", e.kind())],
            Ok(Ok(Some(Recovery::RolledBack(_)))) => check(rolled_back, "rolled back by recover_merge"),
            Ok(Ok(Some(Recovery::Finished(_)))) => check(&w.after, "finished by recover_merge"),
            Ok(Ok(None)) => Vec::new(),
            Ok(Ok(Some(other))) => vec![format!("recover_merge reports a recovery this test does not know: {other:?}")],
        };
        if !v.is_empty() {
            return v;
        }
    }
    match run() {
        Err(p) => return vec![format!("the re-run panics — {}", panic_text(p))],
        Ok(Err(e)) => {
            if w.rolled_back.is_none() && check(&w.after, "").is_empty() {
                return Vec::new();
            }
            return vec![format!("the re-run fails ({:?}) — {e}", e.kind())];
        }
        Ok(Ok(_)) => {}
    }
    let v = check(&w.after, "after the re-run");
    if !v.is_empty() || !how.again {
        return v;
    }
    let settled = now();
    match run() {
        Err(p) => vec![format!("one more run panics — {}", panic_text(p))],
        Ok(Err(e)) => vec![format!("one more run fails ({:?}) — {e}", e.kind())],
        Ok(Ok(r)) if w.rolled_back.is_some() => {
            let mut v = Vec::new();
            if r != Some(MergeRun::AlreadyDone) {
                v.push(format!("one more run does not find the merge done — {r:?}"));
            }
            if now() != settled {
                v.push(String::from("one more run changes a file"));
            }
            v
        }
        Ok(Ok(_)) => check(&w.after, "after one more run"),
    }
}

/// `check --repair` (`vhdx::check::repair_file`) on every file of the crash
/// state, written out as real files; then the contract — for a merge, that
/// it was rolled back or finished exactly, for another operation, that of
/// the crash states; then the operation re-run on the real files, and its
/// result.
pub fn repair_then_rerun(w: &Workload, raw: &[Arc<Vec<u8>>]) -> Vec<String> {
    let (_dir, root) = write_tree(&w.tree, raw);
    for &i in &w.tree.members {
        let name = IMAGES[i].name;
        match vhdx::check::repair_file(&root.join(name)) {
            Err(e) => return vec![format!("{name}: check --repair fails ({:?}) — {e}", e.kind())],
            Ok(r) if !r.after.is_clean() => {
                return vec![format!("{name}: check --repair leaves errors — {:?}", r.after.errors)];
            }
            Ok(_) => {}
        }
    }
    let state = || Files::new(&w.tree, &root, read_tree(&w.tree, &root));
    let v = match &w.rolled_back {
        Some(rolled_back) => {
            let back = verify(w, &state(), rolled_back, true, None);
            let done = verify(w, &state(), &w.after, true, None);
            match back.is_empty() || done.is_empty() {
                true => Vec::new(),
                false => {
                    let mut v = vec![String::from("neither rolled back nor finished — as rolled back:")];
                    v.extend(back);
                    v.push(String::from("as finished:"));
                    v.extend(done);
                    v
                }
            }
        }
        None => verify(w, &state(), &w.during, false, None),
    };
    if !v.is_empty() {
        return v.into_iter().map(|v| format!("after check --repair: {v}")).collect();
    }
    match catch_unwind(AssertUnwindSafe(|| w.run(&root, None))) {
        Err(p) => return vec![format!("the re-run after check --repair panics — {}", panic_text(p))],
        Ok(Err(e)) => {
            if w.rolled_back.is_some() || !verify(w, &state(), &w.after, true, None).is_empty() {
                return vec![format!("the re-run after check --repair fails ({:?}) — {e}", e.kind())];
            }
        }
        Ok(Ok(_)) => {}
    }
    let v = verify(w, &state(), &w.after, true, None);
    v.into_iter().map(|v| format!("after check --repair and the re-run: {v}")).collect()
}
