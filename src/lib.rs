//! vhdkit: read Microsoft virtual disks (VHD and VHDX: fixed, dynamic,
//! differencing, dirty logs), write them in any of those formats, and keep
//! small, verifiable backups of them in a content-addressed chunk store.
//!
//! ```no_run
//! use vhdkit::export::Target;
//! use vhdkit::store::{BackupOptions, InitOptions, RestoreOptions, Store, VerifyOptions};
//!
//! # fn main() -> vhdkit::Result<()> {
//! // Read-only; parents found and identity-checked; a dirty log replayed in memory.
//! let disk = vhdkit::open("vm/disk.avhdx")?;
//! println!("{:?}, {} bytes in {} image(s)", disk.info().format, disk.size(), disk.depth());
//!
//! // A store; the first backup of a name is full, the next ones incremental
//! // (a checkpoint child of the last image backed up reads only its own blocks).
//! let store = Store::init("backups", &InitOptions::default())?;
//! let report = store.backup(&disk, &BackupOptions::new("vm-disk"))?;
//! println!("{} new chunks, {} deduplicated", report.new_chunks, report.dedup_chunks);
//!
//! // Every chunk is verified as it is read back; restore as VHDX.
//! store.restore(report.id.as_str(), "restored.vhdx".as_ref(), Target::Vhdx, &RestoreOptions::default())?;
//! assert!(store.verify(&VerifyOptions::default())?.ok);
//! # Ok(())
//! # }
//! ```
//!
//! Layers, each with its own error type: [`format`] parses bytes into
//! structures (no I/O, [`FormatError`]); [`disk`] opens files and chains as
//! one [`Disk`] ([`DiskError`]); [`io`] is the positional-read trait
//! everything reads through; [`export`] writes images; [`store`] keeps
//! backups ([`store::StoreError`]); [`fs`] reads the file systems inside any disk ([`fs::FsError`]). [`Error`] wraps them all, and
//! [`Error::kind`] sorts any of them into an [`ErrorKind`] a product can
//! act on. Long operations take a [`CancelToken`] and report to a
//! [`ProgressSink`].
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod cancel;
#[cfg(feature = "capi")]
pub mod capi;
pub mod cow;
pub mod disk;
mod error;
pub mod export;
pub mod format;
pub mod fs;
pub mod io;
mod json_input;
pub mod nbd;
pub mod progress;
pub mod store;
mod zero;

pub use json_input::json_text;
pub use zero::is_all_zero;

pub use cancel::CancelToken;
pub use disk::{Disk, DiskError, DiskInfo, Extent, ExtentState, OpenOptions, VirtualDisk, open};
pub use error::{Error, ErrorKind, Result};
pub use format::{FormatError, Guid};
pub use progress::{Progress, ProgressSink};
