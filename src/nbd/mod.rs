//! Serves any [`VirtualDisk`] (a backup, an image, a flattened chain) over
//! the NBD protocol, so hypervisors and tools read it in place: instant
//! restore.
//!
//! What is spoken: the fixed newstyle handshake with `NBD_OPT_GO`, `INFO`,
//! `LIST`, `ABORT` and `EXPORT_NAME`; export names; block size constraints
//! (minimum 1, preferred 64 KiB, maximum 32 MiB); structured replies;
//! `NBD_OPT_SET_META_CONTEXT` with `base:allocation`. Block status reports
//! data and holes (holes read as zeros) from the disk's allocation map,
//! and a structured read answers holes with `OFFSET_HOLE` chunks, so a
//! client copies a sparse disk without moving its zeros. Read-only exports
//! advertise `CAN_MULTI_CONN`. No TLS: serve on loopback or a Unix socket
//! (the default address is loopback), or behind a tunnel.
//!
//! An export may have a copy-on-write [`CowOverlay`]: it is then writable,
//! and writes, trims and write-zeroes land in the overlay file, never in
//! the disk served. [`CowDisk`] is the merged view, which a backup can
//! capture as an incremental whose change set is the overlay's map.
//!
//! One thread per connection, at most [`ServerOptions::max_connections`]
//! at once (more are closed as they arrive); each connection's memory is
//! bounded (see the session module). [`Server::serve`] returns once its
//! cancel token is cancelled, after every connection has ended.
//!
//! May import: `disk` (what it serves), `cow` (write overlays) and the leaf
//! helpers; a backup reaches it as a `VirtualDisk`, so it needs no `store`.

mod export;
#[cfg(feature = "fuzzing")]
pub mod proto;
#[cfg(not(feature = "fuzzing"))]
mod proto;
mod server;
mod session;

pub(crate) use export::ExportView;
pub use export::{DEFAULT_CACHE_BYTES, Export};
#[cfg(feature = "fuzzing")]
pub use server::fuzz_session;
pub use server::{Listener, Server, ServerOptions};
