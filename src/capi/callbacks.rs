//! Cancel handles, the progress callback and the write callback.

use std::cell::Cell;
use std::ffi::c_void;
use std::sync::Mutex;

use super::args;
use super::error::{CallbackFailed, Fail, call, vhdkit_error, vhdkit_status};
use super::handles::Table;
use crate::CancelToken;
use crate::export::ExportSink;
use crate::progress::{Operation, Progress, ProgressSink};

/// A cancel handle: pass it to long calls; trip it from any thread and they
/// stop at their next check (within a few MiB), committing nothing.
pub struct vhdkit_cancel {
    _opaque: [u8; 0],
}

pub(crate) static CANCELS: Table<CancelToken> = Table::new("vhdkit_cancel");

/// The token behind an optional cancel handle (a fresh one for null).
pub(crate) fn cancel_token(cancel: *const vhdkit_cancel) -> Result<CancelToken, Fail> {
    if cancel.is_null() { Ok(CancelToken::new()) } else { Ok((*CANCELS.get(cancel)?).clone()) }
}

/// Makes a cancel handle.
///
/// # Safety
/// `out` points to writable storage for a handle; `err` is null or likewise.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_cancel_new(out: *mut *mut vhdkit_cancel, err: *mut *mut vhdkit_error) -> vhdkit_status {
    call(err, || {
        args::out(out, "out")?;
        args::put(out, CANCELS.insert(CancelToken::new()));
        Ok(())
    })
}

/// Trips a cancel handle: every call given it stops soon. Safe from any
/// thread, any number of times, and from a progress callback.
///
/// # Safety
/// `err` is null or points to writable storage for an error.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn vhdkit_cancel_trip(
    cancel: *const vhdkit_cancel,
    err: *mut *mut vhdkit_error,
) -> vhdkit_status {
    call(err, || {
        CANCELS.get(cancel)?.cancel();
        Ok(())
    })
}

/// Frees a cancel handle (null is ignored). Calls still running with it
/// keep their own reference and may still be cancelled through another.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_cancel_free(cancel: *mut vhdkit_cancel) {
    CANCELS.remove(cancel);
}

/// Which operation a progress report is about.
pub type vhdkit_operation = i32;
/// Reading a disk into a store.
pub const VHDKIT_OP_BACKUP: vhdkit_operation = 1;
/// Writing a backup out of a store.
pub const VHDKIT_OP_RESTORE: vhdkit_operation = 2;
/// Writing an image.
pub const VHDKIT_OP_EXPORT: vhdkit_operation = 3;
/// Checking a store.
pub const VHDKIT_OP_VERIFY: vhdkit_operation = 4;
/// Vacuuming a store.
pub const VHDKIT_OP_VACUUM: vhdkit_operation = 5;

/// A progress report. Fields may be added at the end in a minor version.
#[repr(C)]
#[derive(Debug, Clone, Copy)]
pub struct vhdkit_progress {
    /// A `VHDKIT_OP_*` value (0 for one this header does not name).
    pub operation: vhdkit_operation,
    /// Which disk of a multi-disk job (0 for single-disk operations).
    pub item: u32,
    /// How many disks the job has (1 for single-disk operations).
    pub items: u32,
    /// Bytes handled so far.
    pub bytes_done: u64,
    /// Bytes the operation will handle in all (0 while unknown).
    pub bytes_total: u64,
}

/// Receives progress. Called from vhdkit's own threads, one call at a time
/// per operation and a few times a second at most; the report is valid
/// during the call only. It must return quickly, must not throw or unwind,
/// and must not call into the handle whose operation it reports on (it may
/// trip a cancel handle).
pub type vhdkit_progress_fn = Option<unsafe extern "C" fn(user: *mut c_void, progress: *const vhdkit_progress)>;

/// A caller's pointer, passed back to its callbacks from vhdkit's threads:
/// the caller promised, by passing it, that this is allowed.
#[derive(Clone, Copy)]
struct UserData(*mut c_void);
// SAFETY: only handed back to the caller's own callback, whose documented
// contract is to be callable from vhdkit's threads.
unsafe impl Send for UserData {}
// SAFETY: as above.
unsafe impl Sync for UserData {}

/// The sink that calls `callback` (none when it is null), one call at a time.
pub(crate) fn progress_sink(callback: vhdkit_progress_fn, user: *mut c_void) -> ProgressSink {
    let Some(f) = callback else { return ProgressSink::none() };
    let user = UserData(user);
    let one_at_a_time = Mutex::new(());
    ProgressSink::new(move |p: Progress| {
        let _turn = one_at_a_time.lock().unwrap_or_else(|e| e.into_inner());
        let report = vhdkit_progress {
            operation: match p.operation {
                Operation::Backup => VHDKIT_OP_BACKUP,
                Operation::Restore => VHDKIT_OP_RESTORE,
                Operation::Export => VHDKIT_OP_EXPORT,
                Operation::Verify => VHDKIT_OP_VERIFY,
                Operation::Vacuum => VHDKIT_OP_VACUUM,
            },
            item: u32::try_from(p.item).unwrap_or(u32::MAX),
            items: u32::try_from(p.items).unwrap_or(u32::MAX),
            bytes_done: p.bytes_done,
            bytes_total: p.bytes_total,
        };
        let user = user;
        // SAFETY: the caller's callback, with its own pointer and a report
        // that lives for the call.
        unsafe { f(user.0, &report) }
    })
}

/// Receives an image's bytes: write `len` bytes at `data` to the output at
/// `offset`, returning 0, or any other value to stop the operation (which
/// then fails with `VHDKIT_CALLBACK` and this value as the error's OS code).
///
/// Called on the thread that made the call, in no particular offset order,
/// never with overlapping ranges. Ranges never written must read as zeros
/// (a new file, or a stream written past its end, does that): vhdkit writes
/// the zeros at the end of the output itself, so its length comes out right.
pub type vhdkit_write_fn =
    Option<unsafe extern "C" fn(user: *mut c_void, offset: u64, data: *const u8, len: usize) -> i32>;

/// An [`ExportSink`] over a caller's write callback.
pub(crate) struct CallbackSink {
    write: unsafe extern "C" fn(*mut c_void, u64, *const u8, usize) -> i32,
    user: *mut c_void,
    /// The end of the furthest write, and the length asked for.
    end: Cell<u64>,
    len: Cell<u64>,
}

impl CallbackSink {
    pub(crate) fn new(write: vhdkit_write_fn, user: *mut c_void) -> Result<CallbackSink, Fail> {
        let write = write.ok_or_else(|| Fail::argument("the write callback is null"))?;
        Ok(CallbackSink { write, user, end: Cell::new(0), len: Cell::new(0) })
    }

    fn send(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        // SAFETY: the caller's callback, given its own pointer and a buffer
        // valid for the call.
        let code = unsafe { (self.write)(self.user, offset, buf.as_ptr(), buf.len()) };
        if code != 0 {
            return Err(std::io::Error::other(CallbackFailed { what: "write", code }));
        }
        Ok(())
    }

    /// Writes zeros from the furthest write to the length asked for.
    pub(crate) fn finish(&self) -> std::io::Result<()> {
        let zeros = vec![0u8; 1 << 20];
        let mut at = self.end.get();
        while at < self.len.get() {
            let n = (self.len.get() - at).min(zeros.len() as u64) as usize;
            self.send(&zeros[..n], at)?;
            at += n as u64;
        }
        self.end.set(at);
        Ok(())
    }
}

impl ExportSink for CallbackSink {
    fn write_at(&self, buf: &[u8], offset: u64) -> std::io::Result<()> {
        self.send(buf, offset)?;
        self.end.set(self.end.get().max(offset + buf.len() as u64));
        Ok(())
    }

    fn set_len(&self, len: u64) -> std::io::Result<()> {
        self.len.set(len);
        Ok(())
    }
}
