//! Pointers from C, checked in one place: disk handles and `VhdxDisk **`
//! out-parameters, byte buffers, caller arrays, and the caller-allocated
//! structs that carry their own size. (C strings are in `strings.rs`.)
//!
//! # The `struct_size` rule
//!
//! Every struct the caller allocates and the library reads (the options,
//! `VhdxStorageCallbacks`) or fills (the reports, `VhdxInfo`) begins with
//! `uint32_t struct_size`: the struct's size as the caller was compiled,
//! `sizeof`. The library checks it before touching anything else of the
//! struct ([`read_struct`], [`out_struct`], [`init_struct`]):
//!
//! - smaller than [`SizedStruct::OLDEST`] (a client built against a layout
//!   this library does not know, or that forgot to set it):
//!   `VHDX_ERR_INVALID_ARGUMENT`, naming the struct and both sizes, with no
//!   other byte of the struct read or written and nothing else done;
//! - a struct read by the library larger than the layout it knows (a client
//!   built against a later header): refused the same way, because a field
//!   it sets would be ignored;
//! - a struct filled by the library may be larger: only the fields this
//!   library knows are written, the rest keep what the caller put there;
//! - never is a byte past `struct_size` read or written, nor the
//!   `struct_size` field itself changed (except by the `_init` functions,
//!   which set it to the size they are given).
//!
//! How a struct may grow, so that clients built against an older header keep
//! working: fields are only ever appended, each starting at or past the
//! `sizeof` of every earlier layout (where C would put a new field into the
//! old layout's tail padding, add an explicit padding field first); the
//! struct's `OLDEST` stays the size of its first layout; and the library
//! then reads or writes only the first `struct_size` bytes, the fields past
//! them taking their defaults. [`read_struct`] and [`OutStruct::write`]
//! already copy exactly `min(struct_size, size_of::<T>())` bytes, so adding
//! a field needs no change here; the struct's `LAYOUTS` then lists every
//! layout's size, and any other `struct_size` is refused, so that no field
//! (a pointer) is ever read in part. Structs the caller allocates in arrays
//! (`VhdxRange`, `VhdxConflict`) cannot carry their size this way: their
//! layout is frozen; a later version that needs more adds a new function.

use alloc::format;
use core::mem::size_of;
use core::ptr;

use super::disk::VhdxDisk;
use super::error::{Failure, FfiResult, VHDX_OK};

/// A caller-allocated `#[repr(C)]` struct that begins with its size.
///
/// # Safety
/// Implementors are `#[repr(C)]` with `struct_size: u32` as their first
/// field, and any value a C caller can store in the fields (bools as 0 or 1,
/// pointers and function pointers as they are) is a valid value of `Self`.
pub(crate) unsafe trait SizedStruct: Copy + Default {
    /// The struct's C name, for messages.
    const NAME: &'static str;
    /// The smallest `struct_size` accepted: the size of the struct's first
    /// layout, which every later layout extends (see the module docs).
    const OLDEST: usize;
    /// Once a struct has grown: the `struct_size` of each of its layouts,
    /// the only sizes accepted, so that no field (a pointer) is ever taken
    /// in part. Empty: one layout.
    const LAYOUTS: &'static [usize] = &[];
}

/// The size the library knows of `T`, as C's `sizeof`.
const fn known<T>() -> usize {
    size_of::<T>()
}

/// How many leading bytes are `struct_size` itself.
const SIZE_FIELD: usize = size_of::<u32>();

/// Where the size of a refused struct came from, for messages.
const FIELD: &str = "its struct_size";
const ARGUMENT: &str = "the struct_size argument";

fn too_small<T: SizedStruct>(function: &str, arg: &str, given: usize, source: &str) -> Failure {
    Failure::invalid(format!(
        "{function}: `{arg}` is a {} of {given} bytes ({source}), smaller than the {} bytes this libvhdx \
         needs: set struct_size to sizeof({})",
        T::NAME,
        T::OLDEST,
        T::NAME,
    ))
}

fn too_new<T: SizedStruct>(function: &str, arg: &str, given: usize, source: &str) -> Failure {
    Failure::invalid(format!(
        "{function}: `{arg}` is a {} of {given} bytes ({source}), larger than the {} bytes this libvhdx \
         knows: it comes from a newer vhdx.h, whose added fields this library would ignore",
        T::NAME,
        known::<T>(),
    ))
}

/// The `struct_size` of the struct at `p`, checked to be one this library
/// can read (`writing`: false) or fill (`writing`: true).
///
/// # Safety
/// `p` is non-NULL and points to at least 4 readable bytes, its
/// `struct_size`.
unsafe fn declared_size<T: SizedStruct>(function: &str, arg: &str, p: *const T, writing: bool) -> FfiResult<usize> {
    // SAFETY: non-NULL, and every such struct begins with its u32 size,
    // aligned as the struct is (at least 4).
    let given = unsafe { p.cast::<u32>().read() } as usize;
    if given < T::OLDEST {
        return Err(too_small::<T>(function, arg, given, FIELD));
    }
    if !writing && given > known::<T>() {
        return Err(too_new::<T>(function, arg, given, FIELD));
    }
    if !T::LAYOUTS.is_empty() && !T::LAYOUTS.contains(&given) && given <= known::<T>() {
        return Err(Failure::invalid(format!(
            "{function}: `{arg}` is a {} of {given} bytes ({FIELD}), which is the size of none of its layouts \
             ({:?}): set struct_size to sizeof({})",
            T::NAME,
            T::LAYOUTS,
            T::NAME,
        )));
    }
    Ok(given)
}

/// Reads the caller's struct `p`, argument `arg` of `function`: `None` for
/// NULL; the fields past a smaller (older) `struct_size` take their
/// defaults.
///
/// # Safety
/// `p` is NULL or points to a struct of `T`'s kind with `struct_size`
/// readable bytes.
pub(crate) unsafe fn read_struct<T: SizedStruct>(function: &str, arg: &str, p: *const T) -> FfiResult<Option<T>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller's promise.
    let given = unsafe { declared_size(function, arg, p, false)? };
    let mut value = T::default();
    // SAFETY: `given <= size_of::<T>()` (checked), the caller promises
    // `given` readable bytes at `p`, and `value` is ours: no overlap.
    unsafe { ptr::copy_nonoverlapping(p.cast::<u8>(), ptr::addr_of_mut!(value).cast::<u8>(), given) };
    Ok(Some(value))
}

/// A caller's struct the library fills, checked by [`out_struct`] before
/// the call does anything.
pub(crate) struct OutStruct<T> {
    p: *mut T,
    given: usize,
}

/// Checks the caller's struct `p`, argument `arg` of `function`, that the
/// call will fill: `None` for NULL.
///
/// # Safety
/// `p` is NULL or points to a struct of `T`'s kind with `struct_size`
/// writable bytes that stay valid (and untouched by others) until the
/// exported function returns; the result is used only during that call.
pub(crate) unsafe fn out_struct<T: SizedStruct>(
    function: &str,
    arg: &str,
    p: *mut T,
) -> FfiResult<Option<OutStruct<T>>> {
    if p.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and the caller's promise.
    let given = unsafe { declared_size(function, arg, p, true)? };
    Ok(Some(OutStruct { p, given }))
}

impl<T: SizedStruct> OutStruct<T> {
    /// Stores `value`'s fields in the caller's struct: the bytes past
    /// `struct_size` (which is left as the caller set it) up to
    /// `min(struct_size, size_of::<T>())`.
    pub(crate) fn write(&self, value: &T) {
        let end = self.given.min(known::<T>());
        // SAFETY: out_struct's caller promised `given` writable bytes at `p`
        // for this call; `SIZE_FIELD <= OLDEST <= end <= given`, and `value`
        // is ours: no overlap.
        unsafe {
            ptr::copy_nonoverlapping(
                ptr::from_ref(value).cast::<u8>().add(SIZE_FIELD),
                self.p.cast::<u8>().add(SIZE_FIELD),
                end.saturating_sub(SIZE_FIELD),
            );
        }
    }
}

/// The body of a `vhdx_*_init(options, struct_size)` function: fills the
/// first `size` bytes of `*p` with `T`'s defaults and sets its
/// `struct_size` to `size`.
///
/// # Safety
/// `p` is NULL or points to `size` writable bytes.
pub(crate) unsafe fn init_struct<T: SizedStruct>(function: &str, p: *mut T, size: usize) -> FfiResult<i32> {
    if p.is_null() {
        return Err(Failure::null(function, "options"));
    }
    if size < T::OLDEST {
        return Err(too_small::<T>(function, "options", size, ARGUMENT));
    }
    if size > known::<T>() {
        return Err(too_new::<T>(function, "options", size, ARGUMENT));
    }
    if !T::LAYOUTS.is_empty() && !T::LAYOUTS.contains(&size) {
        return Err(Failure::invalid(format!(
            "{function}: `options` is a {} of {size} bytes ({ARGUMENT}), which is the size of none of its \
             layouts ({:?}): pass sizeof({})",
            T::NAME,
            T::LAYOUTS,
            T::NAME,
        )));
    }
    let value = T::default();
    // SAFETY: the caller promises `size` writable bytes at `p`, and
    // `size <= size_of::<T>()`; `value` is ours: no overlap. Then the
    // leading u32 (`size >= OLDEST >= 4`), aligned as the struct is.
    unsafe {
        ptr::copy_nonoverlapping(ptr::from_ref(&value).cast::<u8>(), p.cast::<u8>(), size);
        p.cast::<u32>().write(size as u32);
    }
    Ok(VHDX_OK)
}

/// The handle `p`, argument `disk` of `function`.
///
/// # Safety
/// `p` is NULL or a live handle from this library.
pub(crate) unsafe fn disk_arg<'a>(function: &str, p: *const VhdxDisk) -> FfiResult<&'a VhdxDisk> {
    // SAFETY: the caller promises NULL or a live handle, which we created with
    // Box::into_raw and which lives until vhdx_close.
    unsafe { p.as_ref() }.ok_or_else(|| Failure::null(function, "disk"))
}

/// Checks the out-parameter `out` of `function` and clears `*out`.
///
/// # Safety
/// `out` is NULL or points to a writable `VhdxDisk *`.
pub(crate) unsafe fn clear_out(function: &str, out: *mut *mut VhdxDisk) -> FfiResult<()> {
    if out.is_null() {
        return Err(Failure::null(function, "out"));
    }
    // SAFETY: non-NULL, and the caller promises a writable `VhdxDisk *`.
    unsafe { out.write(ptr::null_mut()) };
    Ok(())
}

/// Stores a new handle for `disk` in `*out`.
///
/// # Safety
/// `out` was checked by [`clear_out`].
pub(crate) unsafe fn set_out(out: *mut *mut VhdxDisk, disk: VhdxDisk) -> FfiResult<i32> {
    // SAFETY: checked non-NULL and writable by clear_out.
    unsafe { out.write(disk.into_raw()) };
    Ok(VHDX_OK)
}

/// The caller's `len` bytes at `buf`, argument `arg` of `function` (NULL is
/// allowed when `len` is 0).
///
/// # Safety
/// `buf` is NULL or points to `len` readable bytes that stay unchanged for
/// the call.
pub(crate) unsafe fn bytes_arg<'a>(function: &str, arg: &str, buf: *const u8, len: usize) -> FfiResult<&'a [u8]> {
    if len == 0 {
        return Ok(&[]);
    }
    if buf.is_null() {
        return Err(Failure::null(function, arg));
    }
    // SAFETY: non-NULL; the caller promises `len` readable bytes.
    Ok(unsafe { core::slice::from_raw_parts(buf, len) })
}

/// The caller's `len` writable bytes at `buf`, argument `arg` of `function`
/// (NULL is allowed when `len` is 0).
///
/// # Safety
/// `buf` is NULL or points to `len` writable bytes that nothing else
/// touches during the call.
pub(crate) unsafe fn bytes_mut_arg<'a>(function: &str, arg: &str, buf: *mut u8, len: usize) -> FfiResult<&'a mut [u8]> {
    if len == 0 {
        return Ok(&mut []);
    }
    if buf.is_null() {
        return Err(Failure::null(function, arg));
    }
    // SAFETY: non-NULL; the caller promises `len` writable, unaliased bytes.
    Ok(unsafe { core::slice::from_raw_parts_mut(buf, len) })
}

/// Checks a caller array `p` of `cap` entries the call fills, argument `arg`
/// of `function`: NULL only with `cap` 0.
pub(crate) fn array_out_arg<T>(function: &str, arg: &str, p: *mut T, cap: usize, cap_name: &str) -> FfiResult<()> {
    if p.is_null() && cap > 0 {
        return Err(Failure::invalid(format!("{function}: `{arg}` is NULL but `{cap_name}` is {cap}")));
    }
    Ok(())
}

/// Stores `items` in the caller array `p` of `cap` entries, as many as fit.
///
/// # Safety
/// `p` passed [`array_out_arg`] with `cap`, and points to `cap` writable
/// entries.
pub(crate) unsafe fn fill_array<T>(p: *mut T, cap: usize, items: impl Iterator<Item = T>) {
    for (i, item) in items.take(cap).enumerate() {
        // SAFETY: i < cap, and the caller promises `cap` writable entries at `p`.
        unsafe { p.add(i).write(item) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C)]
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    struct Two {
        struct_size: u32,
        a: u32,
        b: u64,
    }

    impl Default for Two {
        fn default() -> Self {
            Two { struct_size: size_of::<Two>() as u32, a: 7, b: 9 }
        }
    }

    // SAFETY: repr(C), struct_size first, any bytes are valid integers.
    unsafe impl SizedStruct for Two {
        const NAME: &'static str = "Two";
        const OLDEST: usize = 8;
    }

    #[test]
    fn an_older_smaller_struct_reads_the_rest_as_defaults() {
        // An "old client" layout of 8 bytes: struct_size and a.
        let old: [u32; 4] = [8, 42, 0xdead, 0xbeef];
        // SAFETY: 16 readable bytes, struct_size 8.
        let v = unsafe { read_struct::<Two>("f", "o", old.as_ptr().cast::<Two>()) }.unwrap().unwrap();
        assert_eq!((v.a, v.b), (42, 9), "the bytes past struct_size must not be read");
    }

    #[test]
    fn sizes_below_the_oldest_or_above_the_known_layout_are_refused() {
        for size in [0u32, 4, 7] {
            let s: [u32; 4] = [size, 1, 2, 3];
            // SAFETY: 16 readable bytes.
            let e = unsafe { read_struct::<Two>("f", "o", s.as_ptr().cast::<Two>()) }.unwrap_err();
            assert!(e.message.contains(&format!("Two of {size} bytes")), "{}", e.message);
            assert!(e.message.contains("the 8 bytes this libvhdx needs"), "{}", e.message);
        }
        let s: [u32; 6] = [24, 1, 2, 3, 4, 5];
        // SAFETY: 24 readable bytes.
        let e = unsafe { read_struct::<Two>("f", "o", s.as_ptr().cast::<Two>()) }.unwrap_err();
        assert!(e.message.contains("larger than the 16 bytes"), "{}", e.message);
    }

    #[test]
    fn a_report_is_written_only_up_to_its_struct_size_and_keeps_it() {
        let mut old: [u32; 4] = [8, 0xaaaa, 0xbbbb, 0xcccc];
        // SAFETY: 16 writable bytes, struct_size 8.
        let out = unsafe { out_struct::<Two>("f", "r", old.as_mut_ptr().cast::<Two>()) }.unwrap().unwrap();
        out.write(&Two { struct_size: 99, a: 1, b: 2 });
        assert_eq!(old, [8, 1, 0xbbbb, 0xcccc]);
        let mut big: [u32; 6] = [24, 0, 0, 0, 0x5555, 0x6666];
        // SAFETY: 24 writable bytes.
        let out = unsafe { out_struct::<Two>("f", "r", big.as_mut_ptr().cast::<Two>()) }.unwrap().unwrap();
        out.write(&Two { struct_size: 99, a: 1, b: 2 });
        assert_eq!(big[..2], [24, 1]);
        assert_eq!(big[4..], [0x5555, 0x6666], "a newer client's own fields stay as they were");
    }
}
