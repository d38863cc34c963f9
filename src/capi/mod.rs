//! The C ABI (feature `capi`): what a product written in C, C++, C#, Go or
//! Python calls, through `include/vhdkit.h` (generated from this module by
//! cbindgen and committed; `tests/capi_header.rs` fails when they differ).
//!
//! The rules every function here keeps, so a caller never has to read Rust:
//!
//! - Every call returns a [`vhdkit_status`] (`VHDKIT_OK`, or the failure's
//!   [`ErrorKind`](crate::ErrorKind) as a stable number) and, when the
//!   caller passes a `vhdkit_error**`, fills it with the status, a UTF-8
//!   message and the OS error code behind it, if any ([`error`]).
//! - No panic crosses the boundary: each entry point catches one and
//!   returns `VHDKIT_PANIC` ([`error::call`]).
//! - Handles are opaque tokens, never pointers into Rust memory: each kind
//!   has its own table of live handles ([`handles`]), so a null, freed or
//!   wrong-kind handle is `VHDKIT_INVALID_ARGUMENT`, never a dereference.
//!   Tokens are not reused, so a freed one stays detectably dead.
//! - Options come in as JSON objects (unknown keys refused, so a typo is an
//!   error rather than a default) and reports go out as JSON strings the
//!   caller frees with `vhdkit_string_free`: new fields never change the ABI.
//!
//! Files: `error.rs` statuses, the error object and the entry-point guard;
//! `handles.rs` the handle tables; `args.rs` strings, out-pointers and JSON
//! in and out; `callbacks.rs` progress, cancel and the write callback;
//! `disk.rs` images; `store.rs` opening and maintaining stores; `backup.rs`;
//! `restore.rs` restores and readers; `nbd.rs` the NBD server.
//!
//! May import: the rest of the crate (nothing imports this module).
#![allow(non_camel_case_types)]
// One safety contract holds for every function here and is stated once, in
// the header's preamble: pointers are null or valid for the call, strings
// NUL-terminated, buffers as long as their lengths say.
#![allow(clippy::missing_safety_doc)]

pub mod args;
pub mod backup;
pub mod callbacks;
pub mod disk;
pub mod error;
pub mod handles;
pub mod nbd;
pub mod restore;
pub mod store;

pub use callbacks::{vhdkit_progress, vhdkit_progress_fn, vhdkit_write_fn};
pub use error::{vhdkit_error, vhdkit_status};

/// The ABI version: major in the high 16 bits, minor in the low 16. A minor
/// step adds functions or JSON fields; a major step would change or remove
/// something, which this version promises not to do.
pub const VHDKIT_ABI_VERSION: u32 = 0x0001_0000;

/// The ABI version the library was built with ([`VHDKIT_ABI_VERSION`]): a
/// caller built against a header checks that the major halves agree.
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_abi_version() -> u32 {
    VHDKIT_ABI_VERSION
}

/// The crate's version, as a static NUL-terminated string (never freed).
#[unsafe(no_mangle)]
pub extern "C" fn vhdkit_version() -> *const std::ffi::c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}

#[cfg(test)]
mod tests;
