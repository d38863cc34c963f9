//! Statuses, the error object a caller frees, and [`call`], the guard every
//! entry point runs its body in.

use std::ffi::{CStr, CString, c_char};
use std::panic::{AssertUnwindSafe, catch_unwind};

use crate::ErrorKind;

/// What a call returns: `VHDKIT_OK` (0) or a failure. Numbers are stable;
/// new ones may be added, so treat an unknown one as a failure.
pub type vhdkit_status = i32;

/// Success.
pub const VHDKIT_OK: vhdkit_status = 0;
/// Something asked for does not exist: a file, a parent image, a store, a backup.
pub const VHDKIT_NOT_FOUND: vhdkit_status = 1;
/// Bytes that should be sound are not: a damaged image or store object.
pub const VHDKIT_CORRUPT: vhdkit_status = 2;
/// Valid, but a feature or version vhdkit does not implement.
pub const VHDKIT_UNSUPPORTED: vhdkit_status = 3;
/// Another operation holds a conflicting lock; try later.
pub const VHDKIT_BUSY: vhdkit_status = 4;
/// The operating system refused a read or write (see the error's OS code).
pub const VHDKIT_IO: vhdkit_status = 5;
/// The request is wrong: options out of range, a change list for another disk.
pub const VHDKIT_INVALID_INPUT: vhdkit_status = 6;
/// The caller cancelled; nothing was committed.
pub const VHDKIT_CANCELLED: vhdkit_status = 7;
/// An encrypted store without its key, or with a wrong one.
pub const VHDKIT_UNAUTHORIZED: vhdkit_status = 8;
/// Something vhdkit did not expect of itself: a bug to report.
pub const VHDKIT_INTERNAL: vhdkit_status = 9;
/// A panic inside vhdkit, caught at the boundary: a bug to report.
pub const VHDKIT_PANIC: vhdkit_status = 10;
/// The call itself is wrong: a null pointer, a string that is not UTF-8, a
/// freed or wrong-kind handle, options that are not the JSON asked for.
pub const VHDKIT_INVALID_ARGUMENT: vhdkit_status = 11;
/// A caller's callback returned an error (its code is the error's OS code).
pub const VHDKIT_CALLBACK: vhdkit_status = 12;

/// A failure: its status, a UTF-8 message and the OS error code behind it.
/// Opaque; read with `vhdkit_error_*`, free with `vhdkit_error_free`.
pub struct vhdkit_error {
    status: vhdkit_status,
    message: CString,
    os_code: i32,
}

/// A failure inside the boundary, before it becomes a [`vhdkit_error`].
#[derive(Debug)]
pub struct Fail {
    pub(crate) status: vhdkit_status,
    pub(crate) message: String,
    pub(crate) os_code: i32,
}

impl Fail {
    /// A failure of `status` saying `message`.
    pub(crate) fn new(status: vhdkit_status, message: impl Into<String>) -> Fail {
        Fail { status, message: message.into(), os_code: 0 }
    }

    /// The caller passed something unusable.
    pub(crate) fn argument(message: impl Into<String>) -> Fail {
        Fail::new(VHDKIT_INVALID_ARGUMENT, message)
    }
}

/// A caller's callback failed with this code; carried through the crate's
/// errors inside an `io::Error` and recognised again at the boundary.
#[derive(Debug)]
pub(crate) struct CallbackFailed {
    pub(crate) what: &'static str,
    pub(crate) code: i32,
}

impl std::fmt::Display for CallbackFailed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the {} callback returned {}", self.what, self.code)
    }
}

impl std::error::Error for CallbackFailed {}

/// The status of a crate error kind.
fn status_of(kind: ErrorKind) -> vhdkit_status {
    match kind {
        ErrorKind::NotFound => VHDKIT_NOT_FOUND,
        ErrorKind::Corrupt => VHDKIT_CORRUPT,
        ErrorKind::Unsupported => VHDKIT_UNSUPPORTED,
        ErrorKind::Busy => VHDKIT_BUSY,
        ErrorKind::Io => VHDKIT_IO,
        ErrorKind::InvalidInput => VHDKIT_INVALID_INPUT,
        ErrorKind::Cancelled => VHDKIT_CANCELLED,
        ErrorKind::Unauthorized => VHDKIT_UNAUTHORIZED,
        _ => VHDKIT_INTERNAL,
    }
}

impl From<crate::Error> for Fail {
    fn from(e: crate::Error) -> Fail {
        let mut fail = Fail::new(status_of(e.kind()), e.to_string());
        // The message names each cause the top one does not already say;
        // the innermost OS error gives the code, and a callback's own
        // failure gives its status and code back.
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            let text = s.to_string();
            if !fail.message.contains(&text) {
                fail.message.push_str(": ");
                fail.message.push_str(&text);
            }
            if let Some(io) = s.downcast_ref::<std::io::Error>() {
                if let Some(code) = io.raw_os_error() {
                    fail.os_code = code;
                }
                if let Some(cb) = io.get_ref().and_then(|i| i.downcast_ref::<CallbackFailed>()) {
                    fail.status = VHDKIT_CALLBACK;
                    fail.os_code = cb.code;
                }
            }
            source = s.source();
        }
        fail
    }
}

impl From<crate::store::StoreError> for Fail {
    fn from(e: crate::store::StoreError) -> Fail {
        Fail::from(crate::Error::from(e))
    }
}

impl From<crate::DiskError> for Fail {
    fn from(e: crate::DiskError) -> Fail {
        Fail::from(crate::Error::from(e))
    }
}

/// Runs an entry point's body: clears `*err`, catches a panic, and turns a
/// failure into its status and (when `err` is not null) a new error object.
pub(crate) fn call(err: *mut *mut vhdkit_error, body: impl FnOnce() -> Result<(), Fail>) -> vhdkit_status {
    if !err.is_null() {
        // SAFETY: the caller passes null or a pointer it owns to write to.
        unsafe { *err = std::ptr::null_mut() };
    }
    let outcome = catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| (*s).to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "no message".into());
        Err(Fail::new(VHDKIT_PANIC, format!("vhdkit panicked (a bug; please report it): {what}")))
    });
    match outcome {
        Ok(()) => VHDKIT_OK,
        Err(fail) => {
            let status = fail.status;
            if !err.is_null() {
                let message = CString::new(fail.message.replace('\0', "\\0")).unwrap_or_default();
                let boxed = Box::new(vhdkit_error { status, message, os_code: fail.os_code });
                // SAFETY: as above.
                unsafe { *err = Box::into_raw(boxed) };
            }
            status
        }
    }
}

/// The error's status (`VHDKIT_INVALID_ARGUMENT` for a null error).
///
/// # Safety
/// `error` is null or an error vhdkit returned and the caller has not freed.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_error_status(error: *const vhdkit_error) -> vhdkit_status {
    // SAFETY: the caller's contract above.
    unsafe { error.as_ref() }.map_or(VHDKIT_INVALID_ARGUMENT, |e| e.status)
}

/// The error's message, UTF-8 and NUL-terminated, valid until the error is
/// freed ("" for a null error).
///
/// # Safety
/// As [`vhdkit_error_status`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_error_message(error: *const vhdkit_error) -> *const c_char {
    // SAFETY: the caller's contract above.
    match unsafe { error.as_ref() } {
        Some(e) => e.message.as_ptr(),
        None => c"".as_ptr(),
    }
}

/// The OS error code behind the error (`errno` on Unix, a Win32 or Winsock
/// code on Windows), or a failing callback's return value; 0 when none.
///
/// # Safety
/// As [`vhdkit_error_status`].
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_error_os_code(error: *const vhdkit_error) -> i32 {
    // SAFETY: the caller's contract above.
    unsafe { error.as_ref() }.map_or(0, |e| e.os_code)
}

/// Frees an error (null is ignored).
///
/// # Safety
/// `error` is null or an error vhdkit returned, freed once.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_error_free(error: *mut vhdkit_error) {
    if !error.is_null() {
        // SAFETY: the caller's contract: a Box vhdkit made, freed once.
        drop(unsafe { Box::from_raw(error) });
    }
}

/// A status's name, as a static string ("VHDKIT_NOT_FOUND"), or
/// "VHDKIT_UNKNOWN" for a number this library does not know.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_status_name(status: vhdkit_status) -> *const c_char {
    let name: &CStr = match status {
        VHDKIT_OK => c"VHDKIT_OK",
        VHDKIT_NOT_FOUND => c"VHDKIT_NOT_FOUND",
        VHDKIT_CORRUPT => c"VHDKIT_CORRUPT",
        VHDKIT_UNSUPPORTED => c"VHDKIT_UNSUPPORTED",
        VHDKIT_BUSY => c"VHDKIT_BUSY",
        VHDKIT_IO => c"VHDKIT_IO",
        VHDKIT_INVALID_INPUT => c"VHDKIT_INVALID_INPUT",
        VHDKIT_CANCELLED => c"VHDKIT_CANCELLED",
        VHDKIT_UNAUTHORIZED => c"VHDKIT_UNAUTHORIZED",
        VHDKIT_INTERNAL => c"VHDKIT_INTERNAL",
        VHDKIT_PANIC => c"VHDKIT_PANIC",
        VHDKIT_INVALID_ARGUMENT => c"VHDKIT_INVALID_ARGUMENT",
        VHDKIT_CALLBACK => c"VHDKIT_CALLBACK",
        _ => c"VHDKIT_UNKNOWN",
    };
    name.as_ptr()
}
