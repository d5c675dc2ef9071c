//! A sibling merge (`vhdx::ops::siblings`) crashed at every point.
//!
//! Seven images live on fault-injecting storage behind one power switch
//! ([`Plug`]): a parent, four children merged into it (a, b, c: b loses a
//! conflict to a, c overlaps a with equal bytes; d holds nothing), an
//! outsider (another child of the parent) and a child of a. The merge runs through
//! [`plan_image_set`] with a as the preferred child; a crash after `k` mutating
//! operations, counted over all seven files, makes every later operation on
//! any of them fail. Each file that has unflushed operations is then left in
//! each crash state its storage can build (the others with everything they
//! were told), and the seven files must:
//!
//! 1. open writable on their own (replaying a dirty log) and check clean;
//! 2. open read-only through their chain — the links hold at every point,
//!    thanks to `parent_linkage2`;
//! 3. present, sector by sector, their content before or after the merge;
//!    the outsider and a's child exactly their content before (which is also
//!    their content after) — both computed from byte models of the writes
//!    that made the images, never from the library's reads;
//! 4. at the states "everything" and "nothing" of each crash point: let the
//!    same merge run again to its end, after which every image presents
//!    exactly its content after the merge and the children are empty.

use std::collections::BTreeSet;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use vhdx::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
use vhdx::io::{CrashState, FaultStorage};
use vhdx::ops::siblings::{plan_image_set, Image, ImageSet};
use vhdx::{CreateOptions, Disk, IoError, MemStorage, OpenOptions, Storage};

use crate::support::{crash_states, for_each_crash_point, guids, pattern, read_all, Budget, SharedImage, MIB};
use crate::verify::{check_clean, panic_text};

const SIZE: u64 = 4 * MIB;
/// The images, by index: the parent, the children merged, an outsider, a child of a.
const NAMES: [&str; 7] = ["parent", "a", "b", "c", "outsider", "a-kid", "d"];
const PARENT_OF: [Option<usize>; 7] = [None, Some(0), Some(0), Some(0), Some(0), Some(1), Some(0)];
const CHILDREN: [usize; 4] = [1, 2, 3, 6];
const OUTSIDER: usize = 4;
const KID: usize = 5;
/// a wins the conflicts (index 0 among the children).
const PREFER: usize = 0;

// ------------------------------------------------------------------ one power cut for all files

#[derive(Default)]
struct PowerState {
    ops: u64,
    crash_at: Option<u64>,
    crashed: bool,
}

/// The power of all files: one count of mutating operations; once it
/// reaches the crash point, every operation on every file fails.
#[derive(Default)]
struct Power(Mutex<PowerState>);

impl Power {
    fn gate(&self, mutating: bool) -> Result<(), IoError> {
        let mut s = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if mutating && s.crash_at.is_some_and(|k| s.ops >= k) {
            s.crashed = true;
        }
        if s.crashed {
            return Err(std::io::Error::other("simulated crash: the power is gone").into());
        }
        if mutating {
            s.ops += 1;
        }
        Ok(())
    }
    fn ops(&self) -> u64 {
        self.0.lock().unwrap().ops
    }
    fn crashed(&self) -> bool {
        self.0.lock().unwrap().crashed
    }
}

/// A file on the shared power.
#[derive(Clone)]
struct Plug {
    fs: FaultStorage,
    power: Arc<Power>,
}

impl Storage for Plug {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.power.gate(false)?;
        self.fs.read_exact_at(buf, offset)
    }
    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.power.gate(true)?;
        self.fs.write_all_at(buf, offset)
    }
    fn flush(&mut self) -> Result<(), IoError> {
        self.power.gate(false)?;
        self.fs.flush()
    }
    fn len(&self) -> Result<u64, IoError> {
        self.power.gate(false)?;
        self.fs.len()
    }
    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.power.gate(true)?;
        self.fs.set_len(len)
    }
}

// ------------------------------------------------------------------ the images

/// A locator naming `parent` by relative path and DataWriteGuid.
fn locator(parent: &Disk, name: &str) -> ParentLocator {
    let mut loc = ParentLocator { entries: Vec::new() };
    loc.set(PARENT_LINKAGE, braced_guid(&parent.data_write_guid()));
    loc.set(RELATIVE_PATH, format!(r".\{name}.vhdx"));
    loc
}

/// Image `i` of `images`, read-only, through its chain.
fn open_view(images: &[Arc<Vec<u8>>], i: usize) -> vhdx::Result<Disk> {
    let mut opts = OpenOptions::new();
    if let Some(p) = PARENT_OF[i] {
        opts = opts.parent(open_view(images, p)?);
    }
    opts.open_storage(Box::new(SharedImage(images[i].clone())))
}

fn whole(d: &Disk) -> vhdx::Result<Vec<u8>> {
    let mut v = vec![0u8; d.virtual_size() as usize];
    d.read_at(&mut v, 0)?;
    Ok(v)
}

/// What one image presents, as the test computes it from the writes alone
/// (never from the library's reading): its parent's model overlaid with its
/// writes, and the logical sectors those writes touch (which it holds).
#[derive(Clone)]
struct Model {
    view: Vec<u8>,
    held: BTreeSet<u64>,
}

impl Model {
    fn over(parent: &[u8], writes: &[(u64, Vec<u8>)], sector: u64) -> Model {
        let mut view = parent.to_vec();
        let mut held = BTreeSet::new();
        for (at, data) in writes {
            view[*at as usize..*at as usize + data.len()].copy_from_slice(data);
            held.extend(at / sector..(at + data.len() as u64).div_ceil(sector));
        }
        Model { view, held }
    }
}

/// What the merge must leave, from the models: the parent with every
/// sector a child holds taken from that child's view, the preferred child
/// (a) winning where children disagree (applied last); every merged child
/// then presents that; the outsider and a's child present what they did.
fn merged_views(models: &[Model], sector: u64) -> Vec<Vec<u8>> {
    let mut parent = models[0].view.clone();
    let order = CHILDREN.iter().copied().filter(|&c| c != CHILDREN[PREFER]).chain([CHILDREN[PREFER]]);
    for c in order {
        for &s in &models[c].held {
            let r = (s * sector) as usize..((s + 1) * sector) as usize;
            parent[r.clone()].copy_from_slice(&models[c].view[r]);
        }
    }
    (0..NAMES.len())
        .map(|i| if i == 0 || CHILDREN.contains(&i) { parent.clone() } else { models[i].view.clone() })
        .collect()
}

/// The seven images before the merge, and their models.
fn initial_images(sector: u32) -> (Vec<Vec<u8>>, Vec<Model>) {
    let s = sector as u64;
    let opts = CreateOptions::dynamic(SIZE).block_size(MIB as u32).logical_sector_size(sector);
    let mut p = Disk::create_on(Box::new(MemStorage::new()), &opts, Some(guids(900))).unwrap();
    let parent_writes = [(0, pattern(901, 3 * MIB as usize / 2)), (3 * MIB + 7, pattern(902, 5000))];
    for (at, data) in &parent_writes {
        p.write_at(data, *at).unwrap();
    }
    let mut images = vec![Arc::new(read_all(&*p.into_storage().unwrap()))];
    let mut models = vec![Model::over(&vec![0u8; SIZE as usize], &parent_writes, s)];
    for i in 1..NAMES.len() {
        let parent_index = PARENT_OF[i].unwrap();
        let writes: Vec<(u64, Vec<u8>)> = match NAMES[i] {
            // Across a block boundary, then two more places.
            "a" => vec![
                (MIB - 4 * s, pattern(11, 8 * s as usize)),
                (2 * MIB + 100, pattern(12, 3000)),
                (3 * MIB, pattern(13, 3 * s as usize)),
            ],
            // Against a across the boundary (b loses), and on its own.
            "b" => {
                vec![
                    (MIB - 2 * s + 3, pattern(21, 2 * s as usize)),
                    (3 * MIB / 2 + 5 * s, pattern(22, 10 * s as usize)),
                ]
            }
            // a's own bytes (its model's) over a's sectors (an equal overlap), and on its own.
            "c" => {
                let at = 2 * MIB as usize;
                vec![(2 * MIB, models[1].view[at..at + 4096].to_vec()), (7 * MIB / 2, pattern(31, 2 * s as usize))]
            }
            "outsider" => vec![(MIB - s, pattern(41, 3 * s as usize)), (5 * MIB / 2, pattern(42, 4096))],
            // Where b's write changes a's view, and elsewhere.
            "a-kid" => vec![(3 * MIB / 2 + 6 * s, pattern(51, 2 * s as usize)), (100, pattern(52, 50))],
            // A child that holds nothing: merged all the same, and linked
            // to the parent's new DataWriteGuid.
            "d" => vec![],
            _ => unreachable!(),
        };
        let parent = open_view(&images, parent_index).unwrap();
        let loc = locator(&parent, NAMES[parent_index]);
        let mut d = Disk::create_differencing_on(
            Box::new(MemStorage::new()),
            parent,
            loc,
            Some(MIB as u32),
            Some(guids(910 + i as u64)),
        )
        .unwrap();
        for (at, data) in &writes {
            d.write_at(data, *at).unwrap();
        }
        images.push(Arc::new(read_all(&*d.into_storage().unwrap())));
        models.push(Model::over(&models[parent_index].view, &writes, s));
    }
    (images.into_iter().map(|i| Arc::try_unwrap(i).unwrap()).collect(), models)
}

/// The image set of `storages`, for the merge; every writable open gets GUIDs
/// of its own (per image and per open), the same in every run.
fn image_set<S: Storage + Clone + 'static>(storages: &[S]) -> ImageSet<'static> {
    let image = |i: usize| {
        let storage = storages[i].clone();
        let opens = AtomicU64::new(0);
        Image::new(NAMES[i], move |o: OpenOptions| {
            let n = opens.fetch_add(1, Ordering::Relaxed);
            o.guid_source(guids(((i as u64 + 1) << 40) | n)).open_storage(Box::new(storage.clone()))
        })
    };
    ImageSet {
        parent: image(0),
        children: CHILDREN.iter().map(|&i| image(i)).collect(),
        outsiders: vec![image(OUTSIDER)],
        descendants: vec![(0, image(KID))],
        guid_source: Some(guids(0xA11CE)),
    }
}

fn merge(set: ImageSet<'_>) -> vhdx::Result<()> {
    plan_image_set(set, Some(PREFER))?.execute().map(|_| ())
}

// ------------------------------------------------------------------ checks

/// Every sector of `got` is the one of `old` or of `new`.
fn old_or_new(got: &[u8], old: &[u8], new: &[u8], sector: usize) -> Result<(), String> {
    for (k, g) in got.chunks(sector).enumerate() {
        let r = k * sector..(k + 1) * sector;
        if g != &old[r.clone()] && g != &new[r] {
            return Err(format!("sector {k} is neither its old nor its new content"));
        }
    }
    Ok(())
}

/// What every image presents before and after the merge.
struct Views {
    old: Vec<Vec<u8>>,
    new: Vec<Vec<u8>>,
}

/// Steps 1–3 of the module documentation; returns the recovered images.
fn verify_state(images: Vec<Vec<u8>>, views: &Views, sector: usize) -> Result<Vec<Arc<Vec<u8>>>, String> {
    let mut recovered = Vec::new();
    for (i, image) in images.into_iter().enumerate() {
        let d = OpenOptions::new()
            .writable(true)
            .without_parent()
            .guid_source(guids(0xBAD))
            .open_storage(Box::new(MemStorage::from_vec(image)))
            .map_err(|e| format!("{}: the writable open failed: {e}", NAMES[i]))?;
        let bytes = Arc::new(read_all(&*d.abandon()));
        check_clean(Box::new(SharedImage(bytes.clone())), &[]).map_err(|e| format!("{}: {e}", NAMES[i]))?;
        recovered.push(bytes);
    }
    for (i, name) in NAMES.iter().enumerate() {
        let d = open_view(&recovered, i).map_err(|e| format!("{name} does not open through its chain: {e}"))?;
        let got = whole(&d).map_err(|e| format!("{name}: reading: {e}"))?;
        if i == OUTSIDER || i == KID {
            if got != views.old[i] {
                return Err(format!("{name} does not present exactly what it did"));
            }
        } else {
            old_or_new(&got, &views.old[i], &views.new[i], sector).map_err(|e| format!("{name}: {e}"))?;
        }
    }
    Ok(recovered)
}

/// Step 4: the merge, run again on the recovered images, completes.
fn verify_rerun(recovered: Vec<Arc<Vec<u8>>>, views: &Views) -> Result<(), String> {
    let storages: Vec<FaultStorage> = recovered.iter().map(|b| FaultStorage::from_vec(b.to_vec())).collect();
    merge(image_set(&storages)).map_err(|e| format!("the merge run again failed: {e}"))?;
    let images: Vec<Arc<Vec<u8>>> = storages.iter().map(|s| Arc::new(s.volatile())).collect();
    for (i, name) in NAMES.iter().enumerate() {
        let d = open_view(&images, i).map_err(|e| format!("after the re-run, {name} does not open: {e}"))?;
        if whole(&d).map_err(|e| e.to_string())? != views.new[i] {
            return Err(format!("after the re-run, {name} does not present its content after the merge"));
        }
        if CHILDREN.contains(&i) && !d.change_set().map_err(|e| e.to_string())?.is_empty() {
            return Err(format!("after the re-run, {name} is not empty"));
        }
        // Every link names its parent's current DataWriteGuid only: nothing
        // announced by the interrupted run is left over.
        if let Some(l) = d.parent_locator().and_then(|l| l.parent_linkage2()) {
            return Err(format!("after the re-run, {name} still announces parent_linkage2 {l}"));
        }
    }
    for (i, image) in images.into_iter().enumerate() {
        check_clean(Box::new(SharedImage(image)), &[]).map_err(|e| format!("{}: {e}", NAMES[i]))?;
    }
    Ok(())
}

/// Runs the merge with a crash after `k` operations (none: `None`).
fn run(initial: &[Vec<u8>], k: Option<u64>) -> Result<(Vec<FaultStorage>, Arc<Power>), String> {
    let power = Arc::new(Power::default());
    power.0.lock().unwrap().crash_at = k;
    let storages: Vec<FaultStorage> = initial.iter().map(|b| FaultStorage::from_vec(b.clone())).collect();
    let plugs: Vec<Plug> = storages.iter().map(|fs| Plug { fs: fs.clone(), power: power.clone() }).collect();
    let result = catch_unwind(AssertUnwindSafe(|| merge(image_set(&plugs))))
        .map_err(|p| format!("the merge panicked: {}", panic_text(p)))?;
    match (result, power.crashed()) {
        (Ok(()), true) => Err(String::from("the merge reported success although the power failed under it")),
        (Err(e), false) => Err(format!("the merge failed without a crash: {e}")),
        _ => Ok((storages, power)),
    }
}

/// Which crash state each file is left in.
enum Cut {
    /// Every file with all its unflushed operations.
    Everything,
    /// Every file with none of them.
    Nothing,
    /// One file in this state, the others with everything.
    One(usize, CrashState),
}

/// The crash states of all files at one crash point: everything, nothing,
/// and each file with unflushed operations in each of its states.
fn cuts(storages: &[FaultStorage], sector: u64, k: u64) -> Vec<Cut> {
    let mut out = vec![Cut::Everything];
    let pending: Vec<usize> = (0..storages.len()).filter(|&i| !storages[i].pending().is_empty()).collect();
    if !pending.is_empty() {
        out.push(Cut::Nothing);
    }
    for &i in &pending {
        let budget = Budget { prefixes: 4, tears: 3, subsets: Some(4) };
        for state in crash_states(&storages[i].pending(), sector, k, budget) {
            if !matches!(state, CrashState::AllPending | CrashState::DurableOnly) || pending.len() > 1 {
                out.push(Cut::One(i, state));
            }
        }
    }
    out
}

/// The six files a cut leaves.
fn images_of(storages: &[FaultStorage], cut: &Cut) -> Vec<Vec<u8>> {
    let state = |i: usize| match cut {
        Cut::Everything => CrashState::AllPending,
        Cut::Nothing => CrashState::DurableOnly,
        Cut::One(j, s) if *j == i => s.clone(),
        Cut::One(..) => CrashState::AllPending,
    };
    storages.iter().enumerate().map(|(i, s)| s.crash_image(&state(i))).collect()
}

/// Every crash point of the sibling merge; returns (crash points, states).
pub fn crash_everywhere(sector: u32, threads: usize) -> (u64, u64, Vec<String>) {
    let started = Instant::now();
    let (initial, models) = initial_images(sector);
    let old: Vec<Vec<u8>> = models.iter().map(|m| m.view.clone()).collect();
    let new = merged_views(&models, sector as u64);
    // The models make a merge that changes things: the parent and every
    // merged child's view change, the outsider's and a's child's do not.
    assert_ne!(old[0], new[0], "the merge changes the parent");
    for &c in &CHILDREN {
        assert_ne!(old[c], new[c], "{}'s view changes", NAMES[c]);
    }
    // The library presents the models before the merge and after an
    // uncrashed one (which also counts the operations to crash at).
    let presented = |images: &[Arc<Vec<u8>>], i: usize| whole(&open_view(images, i).unwrap()).unwrap();
    let before: Vec<Arc<Vec<u8>>> = initial.iter().map(|b| Arc::new(b.clone())).collect();
    let (done, power) = run(&initial, None).unwrap_or_else(|e| panic!("the uncrashed merge: {e}"));
    let ops = power.ops();
    let after: Vec<Arc<Vec<u8>>> = done.iter().map(|s| Arc::new(s.volatile())).collect();
    for i in 0..NAMES.len() {
        assert!(presented(&before, i) == old[i], "{} before the merge differs from its model", NAMES[i]);
        assert!(presented(&after, i) == new[i], "{} after the uncrashed merge differs from the model", NAMES[i]);
    }
    let views = Views { old, new };
    let (states, failures) = for_each_crash_point(0..=ops, threads, |k, failed| {
        let fail = |what: String| failed(format!("sibling merge ({sector}-byte sectors), crash after {k}: {what}"));
        let storages = match run(&initial, Some(k)) {
            Ok((s, _)) => s,
            Err(e) => {
                fail(e);
                return 0;
            }
        };
        let cuts = cuts(&storages, sector as u64, k);
        let whole_states = if cuts.iter().any(|c| matches!(c, Cut::Nothing)) { 2 } else { 1 };
        let mut tried = 0;
        for cut in cuts {
            tried += 1;
            // The re-run at one of the two whole states, alternately.
            let rerun = match cut {
                Cut::Everything => k % whole_states == 0,
                Cut::Nothing => k % 2 == 1,
                Cut::One(..) => false,
            };
            let what = match &cut {
                Cut::Everything => String::from("everything"),
                Cut::Nothing => String::from("nothing"),
                Cut::One(i, s) => format!("{} {s:?}", NAMES[*i]),
            };
            let r = catch_unwind(AssertUnwindSafe(|| {
                let recovered = verify_state(images_of(&storages, &cut), &views, sector as usize)?;
                if rerun {
                    verify_rerun(recovered, &views)?;
                }
                Ok::<(), String>(())
            }))
            .unwrap_or_else(|p| Err(format!("panic: {}", panic_text(p))));
            if let Err(e) = r {
                fail(format!("{what}: {e}"));
            }
        }
        tried
    });
    println!(
        "{:<44} {:>4} crash points, {:>5} crash states (6 files each), {:.1?}",
        format!("sibling merge, {sector}-byte sectors"),
        ops + 1,
        states,
        started.elapsed()
    );
    (ops + 1, states, failures)
}
