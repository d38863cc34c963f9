//! Bytes to structures and back: the one layer that knows byte offsets.
//!
//! Holds the codecs of every object the store writes: chunk records, packs,
//! index files, manifests, restore points, the config, and the change lists
//! trackers hand us. Decoding is pure and checks everything it reads;
//! where an object is streamed (packs written, manifests read in slot
//! order) the codec reads or writes that one object through a
//! [`Backend`](crate::store::backend::Backend), and decides nothing about
//! which objects exist.
//!
//! May import: `model`, `crypto`, `backend` and the store's error type.
//! Never `state` or `ops`.

pub mod changes;
pub mod config;
pub mod index_file;
pub mod manifest;
pub mod pack;
pub mod point;
pub mod record;
