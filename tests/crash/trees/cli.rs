//! The command-line tool on a tree of real files.
//!
//! A real process killed: `vhdx merge child.vhdx --preserve-siblings` gets
//! SIGKILL after a delay; the page cache keeps everything it wrote. Every
//! image must then recover and meet the contract of the crash states, and
//! the same command, run again, must complete the merge with every image
//! presenting the result from the models. Each command has a hard time
//! limit, so a hang fails the test.
//!
//! And `vhdx resize` of an image that has children must not break them
//! silently: it refuses, naming them and changing nothing.

use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhdx::ops::merge::SiblingPolicy;

use super::check::{check_files, Files};
use super::check::{Content, Expect};
use super::files::recover;
use super::model::{build, read_tree, write_tree, Model, BASE, CHILD, IMAGES, SIZE};
use super::ops::{merge_workload, Workload, SMALL};
use crate::common::StartRetrying;
use crate::support::XorShift64Star;

/// How long one command may take before the test calls it a hang.
const LIMIT: Duration = Duration::from_secs(60);

/// The built `vhdx` example (see `tests/tool`).
fn bin() -> &'static Path {
    crate::tool::vhdx()
}

fn spawn_merge(root: &Path) -> Child {
    Command::new(bin())
        .current_dir(root)
        .args(["merge", "child.vhdx", "--preserve-siblings"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_retrying()
}

/// Waits for `child`, killing it and failing after [`LIMIT`].
fn wait_bounded(mut child: Child, what: &str) -> ExitStatus {
    let deadline = Instant::now() + LIMIT;
    loop {
        if let Some(status) = child.try_wait().expect("waiting for vhdx") {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: vhdx did not finish within {LIMIT:?}: a hang");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// Runs the merge to its end on the tree at `root`; returns how long it
/// took, or how it failed.
fn merge_to_the_end(root: &Path, what: &str) -> Result<Duration, String> {
    let started = Instant::now();
    let mut child = spawn_merge(root);
    let mut stderr = child.stderr.take().expect("piped");
    let status = wait_bounded(child, what);
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    if !status.success() {
        return Err(format!("vhdx merge fails — {}", text.trim()));
    }
    Ok(started.elapsed())
}

/// The tree at `root` presents the merge's result.
fn check_result(w: &Workload, root: &Path) -> Vec<String> {
    let files = Files::new(&w.tree, root, read_tree(&w.tree, root));
    let mut failures = check_files(&files, &w.after, w.model.sector as usize, None);
    failures.extend(w.check_result(&files).err());
    failures
}

/// The files a killed merge left, recovered in memory, meet the contract.
fn check_killed(w: &Workload, root: &Path) -> Vec<String> {
    let mut recovered = Vec::new();
    for (b, &i) in read_tree(&w.tree, root).iter().zip(&w.tree.members) {
        match recover(IMAGES[i].name, b.to_vec()) {
            Ok(r) => recovered.push(Arc::new(r)),
            Err(e) => return vec![e],
        }
    }
    check_files(&Files::new(&w.tree, root, recovered), &w.during, w.model.sector as usize, None)
}

#[test]
fn merge_killed_with_sigkill_recovers_and_completes() {
    let w = merge_workload(512, &SMALL, CHILD, 1, SiblingPolicy::Preserve);
    let (_d, root) = write_tree(&w.tree, &w.tree.files);
    bin();
    let took = merge_to_the_end(&root, "the merge without a kill").unwrap();
    let v = check_result(&w, &root);
    assert!(v.is_empty(), "the merge without a kill: {v:?}");
    let mut rng = XorShift64Star::new(12);
    let (mut killed, mut finished) = (0, 0);
    let mut failures = Vec::new();
    let kills = 24u32;
    for n in 0..kills {
        // Delays over the whole run (and past it: a loaded machine runs it
        // slower), at seeded points.
        let frac = (n as f64 + (rng.next() % 1000) as f64 / 1000.0) / kills as f64;
        let delay = took.mul_f64(frac * 1.3);
        let what = format!("kill {n} after {delay:.1?}");
        let (_d, root) = write_tree(&w.tree, &w.tree.files);
        let mut child = spawn_merge(&root);
        std::thread::sleep(delay);
        let _ = child.kill();
        let status = wait_bounded(child, &what);
        let mut v = if status.success() {
            finished += 1;
            check_result(&w, &root)
        } else {
            killed += 1;
            check_killed(&w, &root)
        };
        // Run again, whether or not the state met the contract.
        match merge_to_the_end(&root, &format!("{what}, run again")) {
            Ok(_) => v.extend(check_result(&w, &root).into_iter().map(|e| format!("after the re-run: {e}"))),
            Err(e) => v.push(format!("the re-run: {e}")),
        }
        if !v.is_empty() {
            // The first in full, the others by what broke.
            let heads: Vec<&str> = v.iter().map(|e| e.split(" — ").next().unwrap_or(e)).collect();
            failures.push(if failures.is_empty() { format!("{what}: {v:#?}") } else { format!("{what}: {heads:?}") });
        }
    }
    println!(
        "vhdx merge --preserve-siblings (an uninterrupted run took {took:.1?}): {kills} SIGKILLs, {killed} during the \
         merge, {finished} after it finished; {} broke the contract",
        failures.len()
    );
    assert!(failures.is_empty(), "{} of {kills} kills broke the contract:\n{}", failures.len(), failures.join("\n"));
}

/// Resizing a parent changes its DataWriteGuid; its children, which name
/// the old one, would then be refused. The tool must refuse to do that,
/// naming them and changing nothing (`--force` is what breaks them).
#[test]
fn resizing_a_parent_does_not_silently_break_its_children() {
    let model = Model::new(512);
    let tree = build(&model, &SMALL);
    let (_d, root) = write_tree(&tree, &tree.files);
    let grown = SIZE + (1 << 20);
    let mut child = Command::new(bin())
        .current_dir(&root)
        .args(["resize", "base.vhdx", "--size", &grown.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn_retrying();
    let mut stderr = child.stderr.take().expect("piped");
    let status = wait_bounded(child, "vhdx resize base.vhdx");
    let mut text = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut text).unwrap();
    let after = read_tree(&tree, &root);
    if status.success() {
        // Had it resized, the children would have to present what they did.
        let mut base = model.views[BASE].to_vec();
        base.resize(grown as usize, 0);
        let mut want: std::collections::BTreeMap<usize, Expect> =
            SMALL.iter().map(|&i| (i, Expect::same(&model.views[i]))).collect();
        want.insert(BASE, Expect::new(Content::Same(Arc::new(base))));
        let failures = check_files(&Files::new(&tree, &root, after), &want, 512, None);
        panic!("vhdx resize base.vhdx did not refuse; the tree after it: {failures:#?}");
    }
    for (slot, &i) in tree.members.iter().enumerate() {
        assert!(after[slot] == tree.files[slot], "the refused resize changed {}", IMAGES[i].name);
    }
    for name in ["child.vhdx", "sib.vhdx", "empty.vhdx", "--force"] {
        assert!(text.contains(name), "the refusal does not name {name}: {text}");
    }
}
