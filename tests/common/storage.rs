//! In-memory storage for the library: shared memory that outlives the
//! [`Disk`](vhdx::Disk) owning it, and a recorder of every storage
//! operation, to rebuild what a crash after any of them would leave.

use std::sync::{Arc, Mutex};

use vhdx::{IoError, IoErrorKind, Storage};

/// Storage over shared memory, so a test can keep the bytes after the
/// [`Disk`](vhdx::Disk) that owns a handle is closed, and reopen or snapshot them.
#[derive(Clone, Default)]
pub struct SharedMem(pub Arc<Mutex<Vec<u8>>>);

impl SharedMem {
    pub fn new() -> SharedMem {
        SharedMem::default()
    }

    pub fn from_vec(v: Vec<u8>) -> SharedMem {
        SharedMem(Arc::new(Mutex::new(v)))
    }

    pub fn snapshot(&self) -> Vec<u8> {
        self.0.lock().unwrap().clone()
    }
}

pub fn eof() -> IoError {
    IoError::new(IoErrorKind::UnexpectedEof, "read past the end of the bytes in memory")
}

/// Reads `buf.len()` bytes of `bytes` at `offset`, as from a file of those
/// bytes: a read past the end fails.
pub fn read_from(bytes: &[u8], buf: &mut [u8], offset: u64) -> Result<(), IoError> {
    let start = usize::try_from(offset).map_err(|_| eof())?;
    let end = start.checked_add(buf.len()).ok_or_else(eof)?;
    buf.copy_from_slice(bytes.get(start..end).ok_or_else(eof)?);
    Ok(())
}

/// Writes `buf` into `bytes` at `offset`, growing them with zeros first
/// where it ends past them, as a file grows.
pub fn write_into(bytes: &mut Vec<u8>, buf: &[u8], offset: u64) -> Result<(), IoError> {
    let start = usize::try_from(offset).map_err(|_| eof())?;
    let end = start.checked_add(buf.len()).ok_or_else(eof)?;
    if end > bytes.len() {
        bytes.resize(end, 0);
    }
    bytes[start..end].copy_from_slice(buf);
    Ok(())
}

impl Storage for SharedMem {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        read_from(&self.0.lock().unwrap(), buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        write_into(&mut self.0.lock().unwrap(), buf, offset)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        Ok(self.0.lock().unwrap().len() as u64)
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        let len = usize::try_from(len).map_err(|_| eof())?;
        self.0.lock().unwrap().resize(len, 0);
        Ok(())
    }
}

/// One storage operation, as recorded by [`Recorder`].
#[derive(Clone, Debug)]
pub enum Op {
    Write(u64, Vec<u8>),
    SetLen(u64),
    Flush,
}

/// Storage that records every operation, so a test can rebuild the bytes a
/// crash after any operation would have left (every prefix of the record).
#[derive(Clone, Default)]
pub struct Recorder {
    pub mem: SharedMem,
    pub ops: Arc<Mutex<Vec<Op>>>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// Operations recorded so far.
    pub fn len(&self) -> usize {
        self.ops.lock().unwrap().len()
    }

    /// The bytes after the first `n` operations (starting from empty storage).
    pub fn image_after(&self, n: usize) -> Vec<u8> {
        let ops = self.ops.lock().unwrap();
        let mut v: Vec<u8> = Vec::new();
        for op in &ops[..n] {
            match op {
                Op::Write(at, data) => write_into(&mut v, data, *at).unwrap(),
                Op::SetLen(len) => v.resize(*len as usize, 0),
                Op::Flush => {}
            }
        }
        v
    }
}

impl Storage for Recorder {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), IoError> {
        self.mem.read_exact_at(buf, offset)
    }

    fn write_all_at(&mut self, buf: &[u8], offset: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Write(offset, buf.to_vec()));
        self.mem.write_all_at(buf, offset)
    }

    fn flush(&mut self) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::Flush);
        Ok(())
    }

    fn len(&self) -> Result<u64, IoError> {
        self.mem.len()
    }

    fn set_len(&mut self, len: u64) -> Result<(), IoError> {
        self.ops.lock().unwrap().push(Op::SetLen(len));
        self.mem.set_len(len)
    }
}
