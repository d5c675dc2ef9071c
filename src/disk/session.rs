//! The GUIDs of one writing session: where fresh ones come from, which of
//! the header's GUIDs this session has already changed, and the
//! DataWriteGuid a merge announced for the next change of content.
//!
//! The format asks for a new FileWriteGuid before the first change of a
//! session and a new DataWriteGuid before the first change a reader can see;
//! `Image::begin_metadata_change` and `Image::begin_data_change` apply these
//! rules with what this records.

use super::options::GuidSource;
use crate::error::{Error, Result};
use crate::format::guid::Guid;

#[derive(Default)]
pub(crate) struct Session {
    /// Supplies fresh GUIDs (a writable image always has one).
    source: Option<GuidSource>,
    /// The FileWriteGuid was changed in this session (by the open's log
    /// replay, or before its first change).
    pub(crate) file_guid_changed: bool,
    /// The DataWriteGuid was changed in this session, or promised to stay.
    pub(crate) data_guid_changed: bool,
    /// The DataWriteGuid the next change of content takes instead of a
    /// fresh one.
    pub(crate) next_data_write_guid: Option<Guid>,
}

impl Session {
    /// A session drawing GUIDs from `source`; `file_guid_changed` when the
    /// open already gave the file a new FileWriteGuid.
    pub(crate) fn new(source: Option<GuidSource>, file_guid_changed: bool) -> Session {
        Session { source, file_guid_changed, ..Session::default() }
    }

    /// A fresh GUID.
    pub(crate) fn new_guid(&mut self) -> Result<Guid> {
        let gen = self.source.as_mut().ok_or_else(|| Error::invalid("no GUID source for a writable disk"))?;
        Ok(gen())
    }
}
