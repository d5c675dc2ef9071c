//! The trees of the tree crash tests and their models: what every image
//! presents, as plain byte arrays built from the writes the test makes
//! (each image's parent's model overlaid with its own writes), never from
//! the library's reads.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vhdx::format::locator::{braced_guid, ParentLocator, PARENT_LINKAGE, RELATIVE_PATH};
use vhdx::{CreateOptions, Disk, Guid, MemStorage, OpenOptions};

use crate::support::{pattern, read_all, MIB};

/// The virtual size of every image of the tree.
pub const SIZE: u64 = 5 * MIB;

/// The images, by index into [`IMAGES`].
pub const BASE: usize = 0;
pub const CHILD: usize = 1;
pub const GRANDCHILD: usize = 2;
pub const SIB: usize = 3;
pub const SIBCHILD: usize = 4;
pub const EMPTY: usize = 5;
pub const MID: usize = 6;
pub const LEAF: usize = 7;
pub const MIDSIB: usize = 8;
/// A byte copy of the base in another directory: a moved or copied parent.
pub const COPY: usize = 9;
/// A dynamic disk presenting the base's content changed in two places,
/// with a DataWriteGuid of its own: a parent the children were not made from.
pub const OTHER: usize = 10;
/// Below `leaf` (C0 of the depth-2 merge), and below `midsib` (a sibling of
/// its intermediate).
pub const LEAFKID: usize = 11;
pub const MIDSIBKID: usize = 12;

/// One write: offset, length, and the seed of its bytes (0: zeros).
type W = (u64, usize, u64);

/// How an image of the tree is made.
pub struct ImageSpec {
    /// Its path under the tree's directory.
    pub name: &'static str,
    /// The image it is a differencing child of.
    pub parent: Option<usize>,
    /// Payload block size in MiB.
    pub block_mib: u32,
    writes: &'static [W],
}

const M: u64 = MIB;

/// The whole tree: `base` → `child` → `grandchild`; `base` → `sib` →
/// `sibchild`; `base` → `empty`; `base` → `mid` → `leaf` → `leafkid`,
/// `mid` → `midsib` → `midsibkid`; and the two stand-alone parents of
/// set-parent, `moved/base.vhdx` and `other.vhdx`. The writes overlap their
/// ancestors' and their siblings', cross block boundaries, start and end
/// inside sectors, and leave the last MiB of `sibchild`'s view zero (the
/// shrink takes it off). The base holds no block 3, which the merges'
/// targets then allocate (a full filesystem can refuse it).
pub const IMAGES: [ImageSpec; 13] = [
    ImageSpec {
        name: "base.vhdx",
        parent: None,
        block_mib: 1,
        // The zeros allocate a block that holds nothing: compaction gives it back.
        writes: &[
            (0, 300_000, 1),
            (2 * M - 700, 300_000, 2),
            (2 * M + 600_000, 100_000, 3),
            (4 * M + 12_345, 50_000, 0),
        ],
    },
    ImageSpec {
        name: "child.vhdx",
        parent: Some(BASE),
        block_mib: 1,
        // A block of zeros over the base's zero block: released (ZERO) by a compaction.
        writes: &[(M - 1000, 5000, 11), (2 * M + 77, 70_000, 12), (3 * M + 512, 512, 13), (4 * M, M as usize, 0)],
    },
    ImageSpec {
        name: "grandchild.vhdx",
        parent: Some(CHILD),
        block_mib: 1,
        writes: &[(2 * M + 30_000, 10_000, 21), (4 * M + 100, 3000, 22)],
    },
    ImageSpec {
        name: "sib.vhdx",
        parent: Some(BASE),
        block_mib: 1,
        writes: &[(M, 2048, 31), (2 * M + 40_000, 60_000, 32), (3 * M + 3, 100, 33)],
    },
    ImageSpec {
        name: "sibchild.vhdx",
        parent: Some(SIB),
        block_mib: 1,
        writes: &[(2 * M + 50_000, 1000, 41), (700, 1500, 42)],
    },
    ImageSpec { name: "empty.vhdx", parent: Some(BASE), block_mib: 2, writes: &[] },
    ImageSpec {
        name: "mid.vhdx",
        parent: Some(BASE),
        block_mib: 1,
        writes: &[(1537, 20_000, 51), (3 * M - 2000, 8000, 52), (4 * M + 500_000, 1000, 53)],
    },
    ImageSpec {
        name: "leaf.vhdx",
        parent: Some(MID),
        block_mib: 1,
        writes: &[(10_000, 4000, 61), (2 * M + 60_000, 3000, 62), (5 * M - 4096, 4096, 63)],
    },
    ImageSpec {
        name: "midsib.vhdx",
        parent: Some(MID),
        block_mib: 1,
        writes: &[(10_500, 100, 71), (3 * M - 1500, 700, 72)],
    },
    ImageSpec { name: "moved/base.vhdx", parent: None, block_mib: 1, writes: &[] },
    ImageSpec {
        name: "other.vhdx",
        parent: None,
        block_mib: 1,
        // Laid over a copy of the base's view; the second lies inside sib's own sectors.
        writes: &[(M - 300, 5000, 81), (2 * M + 45_000, 2000, 82)],
    },
    ImageSpec {
        name: "leafkid.vhdx",
        parent: Some(LEAF),
        block_mib: 1,
        writes: &[(2 * M + 61_000, 1000, 91), (4 * M + 3, 700, 92)],
    },
    ImageSpec {
        name: "midsibkid.vhdx",
        parent: Some(MIDSIB),
        block_mib: 1,
        writes: &[(3 * M - 1000, 300, 101), (10_400, 500, 102)],
    },
];

/// What every image presents, from the writes alone.
pub struct Model {
    /// The logical sector size of every image.
    pub sector: u64,
    /// Per image: the whole virtual disk it presents.
    pub views: Vec<Arc<Vec<u8>>>,
    /// Per image: the logical sectors it holds itself (every sector a write
    /// of its own touched; all of them for a disk without a parent).
    pub owned: Vec<Vec<bool>>,
}

fn bytes_of(&(_, len, seed): &W) -> Vec<u8> {
    if seed == 0 {
        vec![0u8; len]
    } else {
        pattern(seed, len)
    }
}

impl Model {
    pub fn new(sector: u64) -> Model {
        let sectors = (SIZE / sector) as usize;
        let mut views: Vec<Arc<Vec<u8>>> = Vec::new();
        let mut owned = Vec::new();
        for (i, spec) in IMAGES.iter().enumerate() {
            let mut view = match (i, spec.parent) {
                (COPY | OTHER, _) => views[BASE].to_vec(),
                (_, Some(p)) => views[p].to_vec(),
                (_, None) => vec![0u8; SIZE as usize],
            };
            let mut own = vec![spec.parent.is_none(); sectors];
            for w in spec.writes {
                let at = w.0 as usize;
                view[at..at + w.1].copy_from_slice(&bytes_of(w));
                own[at / sector as usize..(at + w.1).div_ceil(sector as usize)].fill(true);
            }
            views.push(Arc::new(view));
            owned.push(own);
        }
        Model { sector, views, owned }
    }

    /// The logical sectors any of `images` holds.
    pub fn union_owned(&self, images: &[usize]) -> Vec<bool> {
        let mut out = vec![false; self.owned[0].len()];
        for &i in images {
            for (o, &x) in out.iter_mut().zip(&self.owned[i]) {
                *o |= x;
            }
        }
        out
    }

    /// `under` with the sectors `mask` marks taken from `over`.
    pub fn overlay(&self, under: &[u8], over: &[u8], mask: &[bool]) -> Vec<u8> {
        let s = self.sector as usize;
        let mut out = under.to_vec();
        for (k, _) in mask.iter().enumerate().filter(|(_, &m)| m) {
            out[k * s..(k + 1) * s].copy_from_slice(&over[k * s..(k + 1) * s]);
        }
        out
    }
}

/// A tree of real files in a directory of its own, made through the
/// library, and checked against the model once made.
pub struct Tree {
    _dir: tempfile::TempDir,
    /// The directory (canonical).
    pub root: PathBuf,
    /// The images of the tree, by index into [`IMAGES`].
    pub members: Vec<usize>,
    /// Per member, in the order of `members`: the file's bytes.
    pub files: Vec<Arc<Vec<u8>>>,
    /// Per image: its DataWriteGuid as made (`None` for images not in the tree).
    pub guids: Vec<Option<Guid>>,
}

impl Tree {
    pub fn path(&self, image: usize) -> PathBuf {
        self.root.join(IMAGES[image].name)
    }

    /// Where `image` is among the members.
    pub fn slot(&self, image: usize) -> usize {
        self.members
            .iter()
            .position(|&m| m == image)
            .unwrap_or_else(|| panic!("{} is not in the tree", IMAGES[image].name))
    }
}

/// Makes the images `members` (parents before children) with `sector`-byte
/// logical sectors, and checks that each presents its model.
pub fn build(model: &Model, members: &[usize]) -> Tree {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("moved")).unwrap();
    let p = |i: usize| root.join(IMAGES[i].name);
    for &i in members {
        let spec = &IMAGES[i];
        let mut disk = match (i, spec.parent) {
            (COPY, _) => {
                std::fs::copy(p(BASE), p(COPY)).unwrap();
                continue;
            }
            (_, Some(parent)) => {
                assert!(members.contains(&parent), "{} needs its parent", spec.name);
                // Only a relative path, so that a copy of the tree refers to
                // itself and never to the files it was copied from.
                let parent_disk = OpenOptions::new().open(p(parent)).unwrap();
                let mut loc = ParentLocator { entries: Vec::new() };
                loc.set(PARENT_LINKAGE, braced_guid(&parent_disk.data_write_guid()));
                loc.set(RELATIVE_PATH, format!(r".\{}", IMAGES[parent].name));
                let mut d = Disk::create_differencing_on(
                    Box::new(MemStorage::new()),
                    parent_disk,
                    loc,
                    Some(spec.block_mib * MIB as u32),
                    None,
                )
                .unwrap();
                for w in spec.writes {
                    d.write_at(&bytes_of(w), w.0).unwrap();
                }
                std::fs::write(p(i), read_all(&*d.into_storage().unwrap())).unwrap();
                continue;
            }
            (_, None) => {
                let opts = CreateOptions::dynamic(SIZE)
                    .block_size(spec.block_mib * MIB as u32)
                    .logical_sector_size(model.sector as u32);
                let mut d = Disk::create(p(i), &opts).unwrap();
                if i == OTHER {
                    d.write_at(&model.views[BASE], 0).unwrap();
                }
                d
            }
        };
        for w in spec.writes {
            disk.write_at(&bytes_of(w), w.0).unwrap();
        }
        disk.close().unwrap();
    }
    let mut files = Vec::new();
    let mut guids = vec![None; IMAGES.len()];
    for &i in members {
        let d = OpenOptions::new().open(p(i)).unwrap();
        let mut got = vec![0u8; SIZE as usize];
        d.read_at(&mut got, 0).unwrap();
        assert!(got == *model.views[i], "{} as made does not present its model", IMAGES[i].name);
        guids[i] = Some(d.data_write_guid());
        files.push(Arc::new(std::fs::read(p(i)).unwrap()));
    }
    // The files stay for directory listings and path resolution; the tests
    // work on copies. Read-only, so that nothing writes them behind the
    // tests' back (a locator's absolute path written during a test names them).
    for &i in members {
        let mut perm = std::fs::metadata(p(i)).unwrap().permissions();
        perm.set_readonly(true);
        std::fs::set_permissions(p(i), perm).unwrap();
    }
    Tree { _dir: dir, root, members: members.to_vec(), files, guids }
}

/// Writes `files` (the members' bytes, in member order) into a fresh
/// directory laid out like the tree; returns it and its canonical path.
pub fn write_tree(tree: &Tree, files: &[Arc<Vec<u8>>]) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().canonicalize().unwrap();
    std::fs::create_dir(root.join("moved")).unwrap();
    for (slot, &i) in tree.members.iter().enumerate() {
        std::fs::write(root.join(IMAGES[i].name), &**files[slot]).unwrap();
    }
    (dir, root)
}

/// Reads the members' files back from `root`.
pub fn read_tree(tree: &Tree, root: &Path) -> Vec<Arc<Vec<u8>>> {
    tree.members.iter().map(|&i| Arc::new(std::fs::read(root.join(IMAGES[i].name)).unwrap())).collect()
}
