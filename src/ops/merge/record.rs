//! The merge record: what an unfinished merge is doing, kept in the merged
//! child itself so that a re-run, `check` and `check --repair` find it.
//!
//! It is an optional user metadata item of the child (`IsUser`, not
//! `IsRequired`: readers that do not know it ignore it), UTF-8 text, one
//! field per line:
//!
//! ```text
//! vhdx-merge-record 1
//! phase prepared|copied|done
//! policy refuse|preserve|force
//! child <the child's DataWriteGuid>
//! level <old DataWriteGuid> <next DataWriteGuid> <path>   (C1, C2, … CN: one line each)
//! sibling <k> <path>                                     (a child of Ck not in the chain)
//! ```
//!
//! Paths are relative to the child's directory (`..` where needed), as a
//! locator's `relative_path` is, so that a tree moved or copied as a whole
//! takes its record along: a re-run or `check --repair` of the copy works on
//! the copy's images, never on those it was copied from. A path with no
//! relative form (another drive) is absolute; absolute paths are read too.
//! Bytes outside printable ASCII, and `%`, are written `%XX`. The record lives in the child's metadata region, so it is written
//! and removed through the child's log like any metadata, on whatever
//! storage the child is opened from, and a power cut leaves it exactly as
//! consistent with the child as the child's own locator.

use alloc::string::{String, ToString};
use std::format;
use std::path::{Path, PathBuf};
use std::vec::Vec;

use super::{canonical, directory_of, SiblingPolicy};
use crate::chain::{normalize, relative};
use crate::error::{Error, Result};
use crate::{Disk, Guid};

/// The user metadata item holding the record.
pub(crate) const ITEM: Guid = Guid::from_u128(0x83EB521F_A90D_43FC_8ADE_56486D1D7AA0);

const MAGIC: &str = "vhdx-merge-record 1";

/// The longest record written (a merge whose record would be longer is refused).
const MAX_LEN: usize = 256 * 1024;

/// How far the merge got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Announced: images may hold `parent_linkage2`; the target may be changing.
    Prepared,
    /// The target holds the merged data, durably.
    Copied,
    /// Finished: kept so that a re-run recognises it.
    Done,
}

/// One changed image of the chain, `C1..CN`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Level {
    pub(crate) path: PathBuf,
    /// Its DataWriteGuid before the merge.
    pub(crate) old: Guid,
    /// The DataWriteGuid it takes when its content changes (announced).
    pub(crate) next: Guid,
}

/// A merge, as recorded in its child.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Record {
    pub(crate) phase: Phase,
    pub(crate) policy: SiblingPolicy,
    /// The child's DataWriteGuid (it keeps it).
    pub(crate) child_guid: Guid,
    /// `C1..CN`: `levels[k - 1]` is `Ck`; the last is the target.
    pub(crate) levels: Vec<Level>,
    /// Siblings, with the level `k` (1..=N) they are children of.
    pub(crate) siblings: Vec<(usize, PathBuf)>,
}

impl Record {
    pub(crate) fn depth(&self) -> usize {
        self.levels.len()
    }

    pub(crate) fn target(&self) -> &Level {
        self.levels.last().expect("a record has at least one level")
    }

    /// Whether the merge is unfinished.
    pub(crate) fn active(&self) -> bool {
        self.phase != Phase::Done
    }

    /// The record of a merge of `child`, its paths written relative to the
    /// child's directory.
    pub(crate) fn encode(&self, child: &Path) -> Result<Vec<u8>> {
        let base = base_of(child);
        let encode_path = |p: &Path| encode_path(&relative(&base, &canonical(p)));
        let mut s = String::new();
        s.push_str(MAGIC);
        s.push('\n');
        let phase = match self.phase {
            Phase::Prepared => "prepared",
            Phase::Copied => "copied",
            Phase::Done => "done",
        };
        s.push_str(&format!("phase {phase}\npolicy {}\nchild {}\n", policy_name(self.policy), self.child_guid));
        for l in &self.levels {
            s.push_str(&format!("level {} {} {}\n", l.old, l.next, encode_path(&l.path)?));
        }
        for (k, p) in &self.siblings {
            s.push_str(&format!("sibling {k} {}\n", encode_path(p)?));
        }
        if s.len() > MAX_LEN {
            return Err(Error::invalid(format!(
                "the merge record would be {} bytes (at most {MAX_LEN}): too many siblings or too long paths",
                s.len()
            )));
        }
        Ok(s.into_bytes())
    }

    /// The record read from `bytes`, its relative paths resolved against
    /// `base` (the child's directory; left relative when `None`).
    pub(crate) fn decode(bytes: &[u8], base: Option<&Path>) -> Result<Record> {
        let decode_path = |text: &str| {
            decode_path(text).map(|p| match base {
                Some(base) if !p.is_absolute() => normalize(&base.join(p)),
                _ => p,
            })
        };
        let bad = |what: &str| Error::corrupt("merge record", 0, format!("{what} (is it from a newer version?)"));
        let text = core::str::from_utf8(bytes).map_err(|_| bad("not UTF-8 text"))?;
        let mut lines = text.lines();
        if lines.next() != Some(MAGIC) {
            return Err(bad("it does not start with \"vhdx-merge-record 1\""));
        }
        let (mut phase, mut policy, mut child_guid) = (None, None, None);
        let mut levels = Vec::new();
        let mut siblings = Vec::new();
        for line in lines {
            let (key, rest) = line.split_once(' ').ok_or_else(|| bad("a line without a value"))?;
            match key {
                "phase" => {
                    phase = Some(match rest {
                        "prepared" => Phase::Prepared,
                        "copied" => Phase::Copied,
                        "done" => Phase::Done,
                        _ => return Err(bad("an unknown phase")),
                    })
                }
                "policy" => {
                    policy = Some(match rest {
                        "refuse" => SiblingPolicy::Refuse,
                        "preserve" => SiblingPolicy::Preserve,
                        "force" => SiblingPolicy::Force,
                        _ => return Err(bad("an unknown sibling policy")),
                    })
                }
                "child" => child_guid = Some(guid(rest).ok_or_else(|| bad("a bad child GUID"))?),
                "level" => {
                    let mut f = rest.splitn(3, ' ');
                    let (Some(old), Some(next), Some(path)) = (f.next(), f.next(), f.next()) else {
                        return Err(bad("a level line without three fields"));
                    };
                    levels.push(Level {
                        path: decode_path(path).ok_or_else(|| bad("a bad path"))?,
                        old: guid(old).ok_or_else(|| bad("a bad GUID"))?,
                        next: guid(next).ok_or_else(|| bad("a bad GUID"))?,
                    });
                }
                "sibling" => {
                    let (k, path) = rest.split_once(' ').ok_or_else(|| bad("a sibling line without two fields"))?;
                    let k: usize = k.parse().map_err(|_| bad("a bad sibling level"))?;
                    siblings.push((k, decode_path(path).ok_or_else(|| bad("a bad path"))?));
                }
                _ => return Err(bad("an unknown line")),
            }
        }
        let (Some(phase), Some(policy), Some(child_guid)) = (phase, policy, child_guid) else {
            return Err(bad("a field is missing"));
        };
        if levels.is_empty() || siblings.iter().any(|(k, _)| *k == 0 || *k > levels.len()) {
            return Err(bad("its levels do not fit"));
        }
        Ok(Record { phase, policy, child_guid, levels, siblings })
    }

    /// The record in `disk`, if it has one, its paths resolved against the
    /// directory of the path `disk` was opened by (left relative for a disk
    /// opened from storage without a path).
    pub(crate) fn read(disk: &Disk) -> Result<Option<Record>> {
        let base = disk.path().map(|p| base_of(Path::new(p)));
        match disk.image().user_item(ITEM)? {
            Some(bytes) => Record::decode(&bytes, base.as_deref()).map(Some),
            None => Ok(None),
        }
    }

    /// One sentence naming the merge, for messages and `check`.
    pub(crate) fn describe(&self) -> String {
        let chain: Vec<String> = self.levels[..self.depth() - 1].iter().map(|l| l.path.display().to_string()).collect();
        let through = if chain.is_empty() { String::new() } else { format!(" through {}", chain.join(", ")) };
        let flag = match self.policy {
            SiblingPolicy::Refuse => "",
            SiblingPolicy::Preserve => " --preserve-siblings",
            SiblingPolicy::Force => " --force",
        };
        let how = match self.phase {
            Phase::Prepared => "announced; the target may hold part of the data",
            Phase::Copied => "the target holds the merged data; the merged images are being emptied and re-linked",
            Phase::Done => "finished",
        };
        format!(
            "merge of this image into {}{through} (merge --depth {}{flag}, {} sibling(s)): {how}",
            self.target().path.display(),
            self.depth(),
            self.siblings.len()
        )
    }
}

/// The directory the record's paths are relative to: the child's, canonical.
fn base_of(child: &Path) -> PathBuf {
    canonical(&directory_of(child))
}

pub(crate) fn policy_name(p: SiblingPolicy) -> &'static str {
    match p {
        SiblingPolicy::Refuse => "refuse",
        SiblingPolicy::Preserve => "preserve",
        SiblingPolicy::Force => "force",
    }
}

fn guid(text: &str) -> Option<Guid> {
    Guid::try_parse(text).ok()
}

#[cfg(unix)]
fn path_bytes(p: &Path) -> Result<Vec<u8>> {
    Ok(std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str()).to_vec())
}

#[cfg(not(unix))]
fn path_bytes(p: &Path) -> Result<Vec<u8>> {
    p.to_str()
        .map(|s| s.as_bytes().to_vec())
        .ok_or_else(|| Error::invalid(format!("{}: the path is not valid Unicode", p.display())))
}

fn encode_path(p: &Path) -> Result<String> {
    let mut s = String::new();
    for b in path_bytes(p)? {
        if (0x20..0x7F).contains(&b) && b != b'%' {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(s)
}

fn decode_path(s: &str) -> Option<PathBuf> {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = core::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    if out.is_empty() {
        return None;
    }
    #[cfg(unix)]
    {
        Some(PathBuf::from(<std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(out)))
    }
    #[cfg(not(unix))]
    {
        String::from_utf8(out).ok().map(PathBuf::from)
    }
}

// The records store paths as Unix bytes; the tests write them so.
#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let r = Record {
            phase: Phase::Copied,
            policy: SiblingPolicy::Preserve,
            child_guid: Guid::from_u128(1),
            levels: std::vec![
                Level { path: PathBuf::from("/a b/mid%.vhdx"), old: Guid::from_u128(2), next: Guid::from_u128(3) },
                Level { path: PathBuf::from("/t/\u{e9}\nx.vhdx"), old: Guid::from_u128(4), next: Guid::from_u128(5) },
            ],
            siblings: std::vec![(2, PathBuf::from("/t/s.vhdx"))],
        };
        let bytes = r.encode(Path::new("/t/child.vhdx")).unwrap();
        assert_eq!(bytes.iter().filter(|&&b| b == b'\n').count(), 7, "the newline in a path is escaped");
        let text = String::from_utf8(bytes.clone()).unwrap();
        assert!(text.contains(" ../a b/mid%25.vhdx\n") && text.contains(" ./s.vhdx\n"), "relative to /t: {text}");
        assert_eq!(Record::decode(&bytes, Some(Path::new("/t"))).unwrap(), r);
        // Resolved against where the child is now: a tree moved as a whole.
        let moved = Record::decode(&bytes, Some(Path::new("/u/v"))).unwrap();
        assert_eq!(moved.levels[0].path, Path::new("/u/a b/mid%.vhdx"));
        assert_eq!(moved.siblings[0].1, Path::new("/u/v/s.vhdx"));
        // Absolute paths are read as they are.
        let old = text.replace(" ./s.vhdx", " /t/s.vhdx");
        assert_eq!(
            Record::decode(old.as_bytes(), Some(Path::new("/u"))).unwrap().siblings[0].1,
            Path::new("/t/s.vhdx")
        );
        for bad in [
            &b"vhdx-merge-record 2\n"[..],
            b"vhdx-merge-record 1\nphase prepared\npolicy force\n",
            b"vhdx-merge-record 1\nphase nope\n",
            b"vhdx-merge-record 1\nphase done\npolicy force\nchild 00000000-0000-0000-0000-000000000001\n",
            b"\xff\xfe",
        ] {
            assert!(Record::decode(bad, None).is_err(), "{bad:?}");
        }
        let mut sib = r.clone();
        sib.siblings.push((3, PathBuf::from("/x.vhdx")));
        let bytes = sib.encode(Path::new("/t/child.vhdx")).unwrap();
        assert!(Record::decode(&bytes, None).is_err(), "a sibling of a level that does not exist");
    }

    /// A record of exactly MAX_LEN bytes is written; one byte more is
    /// refused (a sibling's name sets the length, one byte a character).
    #[test]
    fn a_record_may_fill_its_bound_exactly() {
        let with_name = |n: usize| Record {
            phase: Phase::Prepared,
            policy: SiblingPolicy::Preserve,
            child_guid: Guid::from_u128(1),
            levels: std::vec![Level {
                path: PathBuf::from("/t/p.vhdx"),
                old: Guid::from_u128(2),
                next: Guid::from_u128(3)
            }],
            siblings: std::vec![(1, PathBuf::from(std::format!("/t/{}", "a".repeat(n))))],
        };
        let child = Path::new("/t/child.vhdx");
        let base = with_name(1).encode(child).unwrap().len();
        let n = 1 + MAX_LEN - base;
        let full = with_name(n).encode(child).unwrap();
        assert_eq!(full.len(), MAX_LEN);
        assert_eq!(Record::decode(&full, Some(Path::new("/t"))).unwrap(), with_name(n));
        let err = with_name(n + 1).encode(child).unwrap_err();
        assert!(err.to_string().contains(&std::format!("{} bytes", MAX_LEN + 1)), "{err}");
    }
}
