//! Reading one chunk through the global index: the first stored copy that
//! verifies wins. Readers of many chunks go through
//! [`ChunkSource`](super::chunk_source::ChunkSource), which comes here for
//! any chunk whose record in a ranged read fails; the baseline of an
//! incremental and verify's keyed pass come here directly.

use crate::store::backend::Backend;
use crate::store::crypto::Crypt;
use crate::store::format::record::decode_record;
use crate::store::model::malformed::Malformed;
use crate::store::model::id::{ChunkId, PackId};
use crate::store::state::index::Index;

/// Reads chunk `id` into `out` from the first stored copy that verifies
/// (record CRC, decompression, length, BLAKE3); `record` is scratch space.
/// On failure, says why the last copy failed.
pub(crate) fn fetch_chunk(
    backend: &dyn Backend,
    index: &Index,
    crypt: &Crypt,
    id: ChunkId,
    out: &mut Vec<u8>,
    record: &mut Vec<u8>,
) -> std::result::Result<(), String> {
    fetch_with(backend, index, id, record, |r| decode_record(r, id, out, crypt))
}

/// Tries each stored copy of `id` in turn until `decode` accepts one.
fn fetch_with(
    backend: &dyn Backend,
    index: &Index,
    id: ChunkId,
    record: &mut Vec<u8>,
    mut decode: impl FnMut(&[u8]) -> std::result::Result<(), Malformed>,
) -> std::result::Result<(), String> {
    let mut last_error = String::from("no stored copy");
    for loc in index.locations(&id) {
        let key = PackId::key(&loc.pack);
        record.resize(loc.length as usize, 0);
        if let Err(e) = backend.read_at(&key, record, loc.offset) {
            last_error = format!("{}: {e}", backend.describe(&key).display());
            continue;
        }
        match decode(record) {
            Ok(()) => return Ok(()),
            Err(e) => last_error = format!("{} at byte {}: {e}", backend.describe(&key).display(), loc.offset),
        }
    }
    Err(last_error)
}
