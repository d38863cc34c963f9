//! Handles: the opaque pointers a caller holds are tokens naming an entry in
//! a table of live objects, one table per kind. A call looks its token up
//! (taking a reference count, so a `_free` from another thread while a call
//! runs drops the object only when that call returns) and never dereferences
//! what the caller passed. A null, freed or wrong-kind token is an error.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use super::error::Fail;

/// Tokens are never reused: a freed handle stays dead. They step by 16 and
/// start high so they look like aligned pointers to a debugger and never
/// collide with small integers a confused caller might pass.
static NEXT: AtomicUsize = AtomicUsize::new(0x10_0000);

/// The live handles of one kind.
pub struct Table<T> {
    kind: &'static str,
    live: RwLock<BTreeMap<usize, Arc<T>>>,
}

impl<T> Table<T> {
    /// An empty table for handles called `kind` in messages.
    pub const fn new(kind: &'static str) -> Table<T> {
        Table { kind, live: RwLock::new(BTreeMap::new()) }
    }

    /// Adds `value`; its token, as the caller's opaque pointer type.
    pub fn insert<P>(&self, value: T) -> *mut P {
        let token = NEXT.fetch_add(16, Ordering::Relaxed);
        self.live.write().unwrap_or_else(|p| p.into_inner()).insert(token, Arc::new(value));
        token as *mut P
    }

    /// The object behind `handle`.
    pub fn get<P>(&self, handle: *const P) -> Result<Arc<T>, Fail> {
        if handle.is_null() {
            return Err(Fail::argument(format!("the {} handle is null", self.kind)));
        }
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        live.get(&(handle as usize)).cloned().ok_or_else(|| {
            Fail::argument(format!("{:p} is not a live {} handle (freed, or another kind)", handle, self.kind))
        })
    }

    /// Runs `f` on the object behind `handle` with the table's read lock
    /// held instead of a reference taken: for short calls made often (a
    /// 4 KiB read), where two atomic operations fewer are worth having. A
    /// `_free` of any handle of this kind waits for `f` to return.
    pub fn with<P, R>(&self, handle: *const P, f: impl FnOnce(&T) -> Result<R, Fail>) -> Result<R, Fail> {
        if handle.is_null() {
            return Err(Fail::argument(format!("the {} handle is null", self.kind)));
        }
        let live = self.live.read().unwrap_or_else(|p| p.into_inner());
        match live.get(&(handle as usize)) {
            Some(value) => f(value),
            None => {
                Err(Fail::argument(format!("{:p} is not a live {} handle (freed, or another kind)", handle, self.kind)))
            }
        }
    }

    /// Forgets `handle`; the object goes when the last call using it ends.
    /// False when it was not live (null, freed already, another kind).
    pub fn remove<P>(&self, handle: *const P) -> bool {
        self.live.write().unwrap_or_else(|p| p.into_inner()).remove(&(handle as usize)).is_some()
    }
}
