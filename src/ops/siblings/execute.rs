//! Carrying a planned merge out, step by step (see the module documentation
//! of [`super`] for the order and what an interruption leaves).

use alloc::string::{String, ToString};
use std::format;
use std::path::Path;
use std::vec::Vec;

use super::{Conflict, Image, ImageSet, SiblingMergePlan, SiblingMergeReport};
use crate::error::{Error, Result};
use crate::ops::link::{announce, copy_runs, linked, settle};
use crate::{Disk, Guid, OpenOptions};

/// The most conflicting ranges an error message lists (the report lists all).
const LISTED: usize = 1000;

impl<'a> SiblingMergePlan<'a> {
    /// What the merge will do; `merged` is false.
    pub fn report(&self) -> &SiblingMergeReport {
        &self.report
    }

    /// The text of the refusal: every unresolved range (up to 1000 of them;
    /// the report lists all).
    fn refusal(&self) -> String {
        let names = |c: &Conflict| -> String {
            let names: Vec<String> =
                c.children.iter().map(|&i| self.report.children[i].path.display().to_string()).collect();
            names.join(" and ")
        };
        let unresolved: Vec<&Conflict> = self.report.unresolved().collect();
        let bytes: u64 = unresolved.iter().map(|c| c.length).sum();
        let sector = self.report.logical_sector_size as u64;
        let mut list: Vec<String> = unresolved
            .iter()
            .take(LISTED)
            .map(|c| {
                format!(
                    "{} differ at bytes {:#x}..{:#x} (sectors {}..{})",
                    names(c),
                    c.offset,
                    c.offset + c.length,
                    c.offset / sector,
                    (c.offset + c.length) / sector
                )
            })
            .collect();
        if unresolved.len() > LISTED {
            list.push(format!("and {} more ranges", unresolved.len() - LISTED));
        }
        let advice = match self.report.preferred {
            Some(p) => format!(
                "the preferred child {} holds none of these sectors, so its bytes cannot decide them",
                self.report.children[p].path.display()
            ),
            None => String::from("name the child whose bytes win with --prefer (SiblingMergeOptions::prefer)"),
        };
        format!(
            "the children's changes conflict: {} range(s), {bytes} bytes, hold different bytes in several \
             children; nothing was modified: {}; {advice}",
            unresolved.len(),
            list.join("; ")
        )
    }

    /// Carries the merge out, in the order the [module documentation](super)
    /// gives. Refused ([`Error::Refused`], nothing modified) while a conflict
    /// is unresolved, and when an image changed since it was planned.
    pub fn execute(mut self) -> Result<SiblingMergeReport> {
        if self.report.unresolved().next().is_some() {
            return Err(Error::Refused(self.refusal()).in_file(self.report.parent.display()));
        }
        if self.runs.is_empty() {
            self.tidy()?;
            self.report.merged = true;
            return Ok(self.report);
        }
        self.verify_unchanged()?;
        let n = self.set.children.len();
        let parent_next = self.set.new_guid();
        let child_next: Vec<Option<Guid>> =
            (0..n).map(|i| if self.changed[i].is_empty() { None } else { Some(self.set.new_guid()) }).collect();

        // 2. Prepare: outsiders, children, descendants; each durable before the next.
        for (o, plan) in self.set.outsiders.iter().zip(&self.outsiders) {
            let d = ImageSet::open_dependent(o, self.set.open_parent(false)?, true)?;
            self.expect(&d, plan.guid, &o.path)?;
            announce(d, &plan.needed, self.parent_guid, parent_next, &mut |_| {})
                .map_err(|e| e.in_file(o.path.display()))?;
        }
        for i in 0..n {
            let mut d = self.set.open_child_alone(i, true)?;
            let path = &self.set.children[i].path;
            self.expect(&d, self.child_guids[i], path)?;
            let loc = linked(d.parent_locator(), self.parent_guid, Some(parent_next))
                .map_err(|e| e.in_file(path.display()))?;
            d.image_mut().relink(loc, false).and_then(|()| d.close()).map_err(|e| e.in_file(path.display()))?;
        }
        for ((i, image), plan) in self.set.descendants.iter().zip(&self.descendants) {
            let Some(next) = child_next[*i] else { continue };
            let d = ImageSet::open_dependent(image, self.set.open_child(*i)?, true)?;
            self.expect(&d, plan.guid, &image.path)?;
            announce(d, &plan.needed, self.child_guids[*i], next, &mut |_| {})
                .map_err(|e| e.in_file(image.path.display()))?;
        }

        // 3. The parent takes the announced DataWriteGuid and the data.
        {
            let parent_path = self.report.parent.display();
            let mut p = self.set.open_parent(true)?;
            self.expect(&p, self.parent_guid, &self.report.parent)?;
            p.image_mut().plan_data_write_guid(parent_next).map_err(|e| e.in_file(&parent_path))?;
            let sources: Vec<Disk> = (0..n).map(|i| self.set.open_child_alone(i, false)).collect::<Result<_>>()?;
            copy_runs(&sources, &self.runs, &mut p, &mut |_| {}).map_err(|e| e.in_file(&parent_path))?;
            drop(sources);
            if p.data_write_guid() != parent_next {
                return Err(Error::invalid("the parent did not take the announced DataWriteGuid").in_file(&parent_path));
            }
            p.close().map_err(|e| e.in_file(&parent_path))?;
        }

        // 4. The children, emptied and linked to the parent; the losers of conflicts first.
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.report.children[i].bytes_overridden == 0);
        for i in order {
            let path = &self.set.children[i].path;
            let mut d = self.set.open_child_alone(i, true)?;
            let loc = linked(d.parent_locator(), parent_next, None).map_err(|e| e.in_file(path.display()))?;
            let emptied = match child_next[i] {
                Some(g) => {
                    d.image_mut().plan_data_write_guid(g).and_then(|()| d.image_mut().empty_and_relink(Some(loc), true))
                }
                None => d.image_mut().empty_and_relink(Some(loc), false),
            };
            emptied.and_then(|()| d.close()).map_err(|e| e.in_file(path.display()))?;
        }

        // 5. Outsiders and descendants linked to their parent's new DataWriteGuid.
        for o in &self.set.outsiders {
            relink_alone(o, parent_next)?;
        }
        for (i, image) in &self.set.descendants {
            if let Some(next) = child_next[*i] {
                relink_alone(image, next)?;
            }
        }
        self.report.merged = true;
        Ok(self.report)
    }

    /// Refuses, before anything is modified, when an image's DataWriteGuid
    /// is not the one it was planned with.
    fn verify_unchanged(&self) -> Result<()> {
        let alone = |image: &Image<'_>| image.open_with(OpenOptions::new().without_parent());
        self.expect(&alone(&self.set.parent)?, self.parent_guid, &self.set.parent.path)?;
        for (c, guid) in self.set.children.iter().zip(&self.child_guids) {
            self.expect(&alone(c)?, *guid, &c.path)?;
        }
        let dependents = self.set.outsiders.iter().chain(self.set.descendants.iter().map(|(_, d)| d));
        for (image, plan) in dependents.zip(self.outsiders.iter().chain(&self.descendants)) {
            self.expect(&alone(image)?, plan.guid, &image.path)?;
        }
        Ok(())
    }

    /// Refuses when `d`'s DataWriteGuid is not the one planned with.
    fn expect(&self, d: &Disk, planned: Guid, path: &Path) -> Result<()> {
        if d.data_write_guid() == planned {
            return Ok(());
        }
        Err(Error::Refused(format!(
            "its content changed since the merge was planned (DataWriteGuid {} instead of {planned})",
            d.data_write_guid()
        ))
        .in_file(path.display()))
    }

    /// With nothing to merge: finishes what an interrupted merge may have
    /// left, links that name the parent only through `parent_linkage2`.
    fn tidy(&self) -> Result<()> {
        for i in 0..self.set.children.len() {
            if !self.child_linkage_current[i] {
                relink_alone(&self.set.children[i], self.parent_guid)?;
            }
        }
        for (o, plan) in self.set.outsiders.iter().zip(&self.outsiders) {
            if !plan.linkage_current {
                relink_alone(o, self.parent_guid)?;
            }
        }
        for ((i, image), plan) in self.set.descendants.iter().zip(&self.descendants) {
            if !plan.linkage_current {
                relink_alone(image, self.child_guids[*i])?;
            }
        }
        Ok(())
    }
}

/// Step 5: `parent_linkage` = `guid`, no `parent_linkage2`; metadata only.
fn relink_alone(image: &Image<'_>, guid: Guid) -> Result<()> {
    let d = image.open_with(OpenOptions::new().writable(true).without_parent())?;
    settle(d, guid).map_err(|e| e.in_file(image.path.display()))
}
