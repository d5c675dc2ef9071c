//! The contract, image by image: what an image of the tree must present
//! after a crash and recovery, or after the operation completed, and the
//! code that checks it on a set of files.

use std::cell::RefCell;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vhdx::io::FileOpener;
use vhdx::{ErrorKind, OpenOptions};

use super::files::{key, opener_of};
use super::model::{Tree, IMAGES};
use crate::support::SharedImage;

/// What an image's virtual disk must hold.
#[derive(Clone)]
pub enum Content {
    /// Exactly this, every byte.
    Same(Arc<Vec<u8>>),
    /// Each logical sector is wholly the old or wholly the new content.
    OldOrNew(Arc<Vec<u8>>, Arc<Vec<u8>>),
    /// Wholly the one or wholly the other.
    Either(Arc<Vec<u8>>, Arc<Vec<u8>>),
    /// A resize: the virtual size is the old one or `new_size`, and the disk
    /// presents the old content cut, or extended with zeros, to its size.
    Resized { old: Arc<Vec<u8>>, new_size: u64 },
}

/// What one image must be like.
#[derive(Clone)]
pub struct Expect {
    pub content: Content,
    /// It may instead be refused with a `ParentMismatch` — the documented
    /// meaning of `--force` for siblings, or of `set-parent
    /// --ignore-id-mismatch` for the children of the image re-linked — but
    /// only once the DataWriteGuid of this image differs from the one it had
    /// before the operation.
    pub may_break_once_changed: Option<usize>,
    /// It holds no block of its own.
    pub empty: bool,
    /// Its locator names its parent's current DataWriteGuid in
    /// `parent_linkage`, and has no `parent_linkage2`.
    pub linked: bool,
    /// The images its parent may be, by path (any, when empty).
    pub parents: Vec<usize>,
}

impl Expect {
    pub fn same(view: &Arc<Vec<u8>>) -> Expect {
        Expect::new(Content::Same(view.clone()))
    }
    pub fn new(content: Content) -> Expect {
        Expect { content, may_break_once_changed: None, empty: false, linked: false, parents: Vec::new() }
    }
    pub fn may_break(mut self, once_changed: usize) -> Expect {
        self.may_break_once_changed = Some(once_changed);
        self
    }
    pub fn empty(mut self) -> Expect {
        self.empty = true;
        self
    }
    pub fn linked(mut self) -> Expect {
        self.linked = true;
        self
    }
    pub fn parent(self, parent: usize) -> Expect {
        self.parent_among(&[parent])
    }
    pub fn parent_among(mut self, parents: &[usize]) -> Expect {
        self.parents = parents.to_vec();
        self
    }
}

/// The files of the tree at one moment: each member's bytes, found by path
/// under `root` (the tree's directory, or a copy of it).
pub struct Files<'a> {
    pub tree: &'a Tree,
    pub root: PathBuf,
    pub bytes: Vec<Arc<Vec<u8>>>,
    /// Per member: a name for this version of its bytes, when checks of it
    /// may be remembered (see [`Memo`]).
    pub versions: Vec<Option<u64>>,
}

impl<'a> Files<'a> {
    pub fn new(tree: &'a Tree, root: &Path, bytes: Vec<Arc<Vec<u8>>>) -> Files<'a> {
        let versions = vec![None; bytes.len()];
        Files { tree, root: root.to_path_buf(), bytes, versions }
    }

    /// Read-only access to the files by path.
    pub fn reader(&self) -> FileOpener {
        self.opener(Arc::new(Mutex::new(BTreeSet::new())))
    }

    /// The member in `slot`, opened alone.
    pub fn alone(&self, slot: usize) -> vhdx::Result<vhdx::Disk> {
        OpenOptions::new().without_parent().open_storage(Box::new(SharedImage(self.bytes[slot].clone())))
    }

    /// Read-only access to the files by path; the members opened are added
    /// to `log`. A copy of the tree elsewhere is served under the tree's own
    /// paths too: the locators' absolute paths name those.
    fn opener(&self, log: Arc<Mutex<BTreeSet<usize>>>) -> FileOpener {
        let mut storages = Vec::new();
        for root in [&self.root, &self.tree.root] {
            let members = self.tree.members.iter().zip(&self.bytes);
            storages.extend(members.map(|(&i, b)| (root.join(IMAGES[i].name), SharedImage(b.clone()))));
        }
        let n = self.bytes.len();
        opener_of(storages, move |k| {
            log.lock().unwrap_or_else(|e| e.into_inner()).insert(k % n);
        })
    }
}

/// The results of checks made at one crash point, by the versions of the
/// files each read: a check that read the same bytes gives the same answer.
#[derive(Default)]
pub struct Memo {
    clean: HashMap<(usize, u64), Result<(), String>>,
    /// Per image: the checks made, each with the (member, version) pairs it read.
    images: HashMap<usize, Vec<Remembered>>,
}

/// A check of one image, and the (member, version) pairs of the files it read.
type Remembered = (Vec<(usize, u64)>, Result<(), String>);

/// `vhdx::check::check_storage` (what `vhdx check` runs) finds no error.
pub fn check_clean(name: &str, bytes: &Arc<Vec<u8>>) -> Result<(), String> {
    let report = vhdx::check::check_storage(Box::new(SharedImage(bytes.clone())))
        .map_err(|e| format!("{name}: check fails to run — {e}"))?;
    if report.is_clean() {
        Ok(())
    } else {
        Err(format!("{name}: check reports errors — {:?}", report.errors))
    }
}

fn first_difference(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).position(|(x, y)| x != y).unwrap_or(a.len().min(b.len()))
}

fn compare(name: &str, got: &[u8], content: &Content, sector: usize) -> Result<(), String> {
    match content {
        Content::Same(want) => {
            if got.len() != want.len() {
                return Err(format!("{name}: wrong virtual size — {} instead of {}", got.len(), want.len()));
            }
            if got != &want[..] {
                let at = first_difference(got, want);
                return Err(format!("{name}: presents other bytes than expected — first at {at:#x}"));
            }
        }
        Content::OldOrNew(old, new) => {
            if got.len() != old.len() {
                return Err(format!("{name}: wrong virtual size — {} instead of {}", got.len(), old.len()));
            }
            for (k, g) in got.chunks(sector).enumerate() {
                let r = k * sector..(k + 1) * sector;
                if g != &old[r.clone()] && g != &new[r] {
                    return Err(format!("{name}: a sector is neither old nor new — sector {k}"));
                }
            }
        }
        Content::Either(a, b) => {
            if got != &a[..] && got != &b[..] {
                return Err(format!("{name}: presents neither its old content nor its new one"));
            }
        }
        Content::Resized { old, new_size } => {
            if got.len() != old.len() && got.len() as u64 != *new_size {
                return Err(format!(
                    "{name}: wrong virtual size — {}, neither {} nor {new_size}",
                    got.len(),
                    old.len()
                ));
            }
            let keep = got.len().min(old.len());
            if got[..keep] != old[..keep] {
                let at = first_difference(got, old);
                return Err(format!("{name}: differs from its old content — first at {at:#x}"));
            }
            if let Some(at) = got[keep..].iter().position(|&b| b != 0) {
                return Err(format!("{name}: the grown part is not zeros — at {:#x}", keep + at));
            }
        }
    }
    Ok(())
}

thread_local! {
    /// The buffer each image is read into (one per thread: a fresh one per
    /// image would cost more than the check).
    static VIEW: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

/// Checks image `i` of `files` against `want`; members read are added to `log`.
fn check_image(
    files: &Files<'_>,
    log: &Arc<Mutex<BTreeSet<usize>>>,
    i: usize,
    want: &Expect,
    sector: usize,
) -> Result<(), String> {
    let name = IMAGES[i].name;
    let path = files.root.join(name);
    let disk = match OpenOptions::new().file_opener(files.opener(log.clone())).open(&path) {
        Ok(d) => d,
        Err(e) => {
            if let (ErrorKind::ParentMismatch, Some(j)) = (e.kind(), want.may_break_once_changed) {
                let slot = files.tree.slot(j);
                log.lock().unwrap().insert(slot);
                let now = OpenOptions::new()
                    .without_parent()
                    .open_storage(Box::new(SharedImage(files.bytes[slot].clone())))
                    .map(|d| d.data_write_guid())
                    .ok();
                if now != files.tree.guids[j] {
                    return Ok(());
                }
                return Err(format!(
                    "{name}: refused by linkage although {} kept its DataWriteGuid — {e}",
                    IMAGES[j].name
                ));
            }
            return Err(format!("{name}: does not open through its chain ({:?}) — {e}", e.kind()));
        }
    };
    VIEW.with_borrow_mut(|got| {
        got.resize(disk.virtual_size() as usize, 0);
        disk.read_at(got, 0).map_err(|e| format!("{name}: reading fails — {e}"))?;
        compare(name, got, &want.content, sector)
    })?;
    if want.empty {
        let g = disk.geometry();
        let held = disk
            .bat_entries()
            .unwrap()
            .iter()
            .enumerate()
            .take(g.entry_count as usize)
            .filter(|&(k, &e)| !g.is_sector_bitmap_index(k) && matches!(e.raw() & 7, 6 | 7))
            .count();
        if held > 0 {
            return Err(format!("{name}: should be empty but holds blocks — {held}"));
        }
    }
    if want.linked {
        let loc = disk.parent_locator().ok_or_else(|| format!("{name}: has no parent locator"))?;
        let parent = disk.parent().ok_or_else(|| format!("{name}: opened without its parent"))?;
        if loc.parent_linkage() != Some(parent.data_write_guid()) {
            return Err(format!("{name}: parent_linkage is not its parent's DataWriteGuid"));
        }
        if let Some(g) = loc.parent_linkage2() {
            return Err(format!("{name}: parent_linkage2 is left in its locator — {g:?}"));
        }
    }
    if !want.parents.is_empty() {
        let parent = disk.parent().and_then(|d| d.path()).map(|s| key(Path::new(s)));
        let allowed: Vec<PathBuf> = want.parents.iter().map(|&p| key(&files.root.join(IMAGES[p].name))).collect();
        if !parent.as_ref().is_some_and(|p| allowed.contains(p)) {
            return Err(format!("{name}: has the wrong parent — {parent:?}, not one of {allowed:?}"));
        }
    }
    Ok(())
}

/// Checks every member of `files` against `want` (one expectation per
/// member), and that `check` finds each clean; remembers what it may in
/// `memo`. Returns the violations.
pub fn check_files(
    files: &Files<'_>,
    want: &BTreeMap<usize, Expect>,
    sector: usize,
    mut memo: Option<&mut Memo>,
) -> Vec<String> {
    let mut violations = Vec::new();
    for (slot, &i) in files.tree.members.iter().enumerate() {
        let name = IMAGES[i].name;
        let r = match (files.versions[slot], memo.as_deref_mut()) {
            (Some(v), Some(m)) => {
                m.clean.entry((slot, v)).or_insert_with(|| check_clean(name, &files.bytes[slot])).clone()
            }
            _ => check_clean(name, &files.bytes[slot]),
        };
        violations.extend(r.err());
    }
    for &i in &files.tree.members {
        let w = want.get(&i).unwrap_or_else(|| panic!("no expectation for {}", IMAGES[i].name));
        let known = memo.as_deref().and_then(|m| m.images.get(&i)).and_then(|seen| {
            seen.iter().find(|(read, _)| read.iter().all(|&(slot, v)| files.versions[slot] == Some(v)))
        });
        let r = match known {
            Some((_, r)) => r.clone(),
            None => {
                let log = Arc::new(Mutex::new(BTreeSet::new()));
                let r = check_image(files, &log, i, w, sector);
                let read: Option<Vec<(usize, u64)>> =
                    log.lock().unwrap().iter().map(|&slot| files.versions[slot].map(|v| (slot, v))).collect();
                if let (Some(read), Some(m)) = (read, memo.as_deref_mut()) {
                    m.images.entry(i).or_default().push((read, r.clone()));
                }
                r
            }
        };
        violations.extend(r.err());
    }
    violations
}
