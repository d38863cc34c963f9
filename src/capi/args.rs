//! What crosses the boundary besides handles: C strings in, JSON options
//! in, JSON reports out, and out-pointers.

use std::ffi::{CStr, CString, c_char};

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::{Fail, VHDKIT_INTERNAL};

/// The UTF-8 string at `p`, named `what` in errors.
pub(crate) fn text<'a>(p: *const c_char, what: &str) -> Result<&'a str, Fail> {
    if p.is_null() {
        return Err(Fail::argument(format!("{what} is null")));
    }
    // SAFETY: the caller passes a NUL-terminated string that outlives the call.
    let bytes = unsafe { CStr::from_ptr(p) };
    bytes.to_str().map_err(|e| Fail::argument(format!("{what} is not UTF-8 (byte {})", e.valid_up_to())))
}

/// [`text`], or `None` for null.
pub(crate) fn text_opt<'a>(p: *const c_char, what: &str) -> Result<Option<&'a str>, Fail> {
    if p.is_null() { Ok(None) } else { text(p, what).map(Some) }
}

/// Options from the JSON object at `p`: defaults for null or "".
pub(crate) fn options<T: DeserializeOwned + Default>(p: *const c_char, what: &str) -> Result<T, Fail> {
    match text_opt(p, what)? {
        None => Ok(T::default()),
        Some(s) if s.trim().is_empty() => Ok(T::default()),
        Some(s) => serde_json::from_str(s).map_err(|e| Fail::argument(format!("{what}: {e}"))),
    }
}

/// Checks an out-pointer before any work is done.
pub(crate) fn out<T>(p: *mut T, what: &str) -> Result<(), Fail> {
    if p.is_null() { Err(Fail::argument(format!("{what} (an out-pointer) is null"))) } else { Ok(()) }
}

/// Stores `value` through `p`, checked by [`out`].
pub(crate) fn put<T>(p: *mut T, value: T) {
    // SAFETY: checked non-null by `out` before the work; the caller owns it.
    unsafe { p.write(value) }
}

/// `value` as JSON, stored through `p` as a string the caller frees with
/// `vhdkit_string_free`. A null `p` means the caller does not want it.
pub(crate) fn put_json(p: *mut *mut c_char, value: &impl Serialize) -> Result<(), Fail> {
    if p.is_null() {
        return Ok(());
    }
    let json = serde_json::to_string(value).map_err(|e| Fail::new(VHDKIT_INTERNAL, format!("report as JSON: {e}")))?;
    // serde_json escapes control characters, so the text holds no NUL.
    let c = CString::new(json).map_err(|e| Fail::new(VHDKIT_INTERNAL, format!("report as JSON: {e}")))?;
    put(p, c.into_raw());
    Ok(())
}

/// `text` stored through `p` as a string the caller frees with
/// `vhdkit_string_free` (nothing when `p` is null).
pub(crate) fn put_string(p: *mut *mut c_char, text: &str) -> Result<(), Fail> {
    if !p.is_null() {
        let c = CString::new(text).map_err(|_| Fail::new(VHDKIT_INTERNAL, format!("{text:?} holds a NUL")))?;
        put(p, c.into_raw());
    }
    Ok(())
}

/// Clears an optional JSON out-pointer before the work, so a failure
/// leaves it null.
pub(crate) fn clear_json(p: *mut *mut c_char) {
    if !p.is_null() {
        put(p, std::ptr::null_mut());
    }
}

/// Frees a string vhdkit returned (null is ignored).
///
/// # Safety
/// `s` is null or a string vhdkit returned, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_string_free(s: *mut c_char) {
    if !s.is_null() {
        // SAFETY: made by CString::into_raw in `put_json`, freed once.
        drop(unsafe { CString::from_raw(s) });
    }
}
