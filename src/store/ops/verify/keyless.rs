//! Verify without the key: what an operator who holds an encrypted
//! store's storage, but not its passphrase, can check.
//!
//! Every key object must decode, with Kdf parameters in bounds. Every
//! sealed object (index files, manifests, restore points, job-log
//! entries, vacuum's records) must have an envelope's structure, a size
//! its header allows and every segment's CRC. Every pack must have its
//! header and a trailer whose sealed index passes its CRC and envelope
//! checks, and its records must tile the space before the index, each
//! with a sound header and CRC, as many as the trailer says. Tags are not
//! checked (that needs the key), so a deliberate change that also fixes
//! the CRCs goes unseen here; `verify` with the key finds it. A damaged
//! manifest or restore point is named by its key.

use std::collections::BTreeSet;
use std::time::Instant;

use crate::progress::Operation;
use crate::store::backend::{Backend, list_keys, read_small};
use crate::store::crypto::envelope;
use crate::store::crypto::keyobj::{KeyObject, MAX_KEY_OBJECT};
use crate::store::error::{Result, StoreError};
use crate::store::format::pack::walk_sealed_pack;
use crate::store::model::id::PackId;
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::layout::Folder;
use crate::store::ops::verify::options::{DamagedChunk, PackFilter, VerifyOptions, VerifyReport};
use crate::store::state::handle::Handle;

/// [`Store::verify`] of an encrypted store opened without its key: see
/// the module documentation.
pub(super) fn verify_keyless(store: &Handle, options: &VerifyOptions, filter: &PackFilter) -> Result<VerifyReport> {
    let started = Instant::now();
    let t0 = store.stored_backend().traffic();
    let _lease = store.read_lease("verify")?;
    let backend = store.stored_backend();
    let mut problems = Vec::new();
    let mut damaged_backups = BTreeSet::new();
    let mut damaged_points = BTreeSet::new();
    let list = |prefix: &str, problems: &mut Vec<String>| match list_keys(backend, prefix) {
        Ok(keys) => keys,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!("listing {} failed: {e}", backend.describe(prefix).display()));
            Vec::new()
        }
    };

    for key in list("keys", &mut problems) {
        let Some(id) = key.strip_prefix("keys/").and_then(|k| k.strip_suffix(".key")) else { continue };
        let verdict = match read_small(backend, &key, MAX_KEY_OBJECT as u64) {
            Ok(bytes) => KeyObject::decode(&bytes, id).map(|_| ()).map_err(|e| e.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => Err(format!("too large for a key object: {e}")),
            Err(e) => Err(format!("unreadable: {e}")),
        };
        if let Err(why) = verdict {
            problems.push(format!("{}: {why}", backend.describe(&key).display()));
        }
    }

    for prefix in Folder::ALL.into_iter().filter(|f| f.sealed()).map(Folder::name) {
        for key in list(prefix, &mut problems) {
            if options.cancel.is_cancelled() {
                return Err(StoreError::Cancelled);
            }
            let verdict = match check_envelope(backend, &key) {
                // Vacuum deletes what it condemned; a key gone since the
                // listing is not damage.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => Err(format!("unreadable: {e}")),
                Ok(verdict) => verdict,
            };
            if let Err(reason) = verdict {
                problems.push(format!("{}: {reason}", backend.describe(&key).display()));
                if let Some((id, _)) = crate::store::format::manifest::id_from_key(&key) {
                    damaged_backups.insert(id);
                }
                if let Some(id) = point_of(&key) {
                    damaged_points.insert(id);
                }
            }
        }
    }

    // The packs a sample or `since` leaves in.
    let listed = match backend.list("packs") {
        Ok(objects) => objects,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            problems.push(format!("listing {} failed: {e}", backend.describe("packs").display()));
            Vec::new()
        }
    };
    let packs_total = listed.len() as u64;
    let read =
        |o: &crate::store::backend::ObjectInfo| PackId::from_key(&o.key).is_none_or(|id| filter.reads(&id, o.modified));
    let listed: Vec<_> = listed.into_iter().filter(read).collect();
    let total: u64 = listed.iter().map(|o| o.size).sum::<u64>().max(1);
    let packs: Vec<String> = listed.into_iter().map(|o| o.key).collect();
    let mut progress = options.progress.throttled(Operation::Verify, total);
    let (mut records, mut damaged, mut done) = (0u64, BTreeSet::new(), 0u64);
    for key in &packs {
        let Some(id) = PackId::from_key(key) else { continue };
        let check = walk_sealed_pack(backend, id, &mut |n| {
            done += n;
            progress.tick(done);
            !options.cancel.is_cancelled()
        });
        if options.cancel.is_cancelled() {
            return Err(StoreError::Cancelled);
        }
        records += check.records;
        damaged.extend(check.bad_crcs.into_iter().map(|(chunk, at, reason)| DamagedChunk {
            chunk: chunk.to_hex(),
            pack: id.to_hex(),
            reason: format!("at byte {at}: {reason}"),
        }));
        if let Some(p) = check.problem {
            problems.push(format!("pack {id}: {p}"));
        }
    }
    progress.finish();
    let damaged_chunks: Vec<DamagedChunk> = damaged.into_iter().collect();
    let damaged_backups: Vec<BackupId> = damaged_backups.into_iter().collect();
    let damaged_points: Vec<PointId> = damaged_points.into_iter().collect();
    Ok(VerifyReport {
        ok: problems.is_empty() && damaged_chunks.is_empty(),
        packs_checked: packs.len() as u64,
        packs_total,
        sample_seed: filter.seed(),
        chunks_checked: records,
        records_checked: records,
        backups_checked: 0,
        damaged_chunks,
        damaged_backups,
        damaged_points,
        problems,
        unfinished_jobs: 0,
        stale_index_entries: 0,
        structure_only: true,
        seconds: started.elapsed().as_secs_f64(),
        traffic: store.stored_backend().traffic().since(t0),
    })
}

/// Checks sealed object `key` as [`envelope::check`] does, a megabyte of
/// segments at a time (a manifest may be large). The outer error is the
/// storage's; the inner, what is wrong with the object.
fn check_envelope(backend: &dyn Backend, key: &str) -> std::io::Result<Result<(), String>> {
    let size = backend.stat(key)?.size;
    let mut head = [0u8; envelope::HEADER];
    if size < envelope::HEADER as u64 {
        return Ok(Err(format!("{size} bytes is too short for a sealed object")));
    }
    backend.read_at(key, &mut head, 0)?;
    let layout = match envelope::decode_header(&head).and_then(|h| envelope::Layout::new(h, size)) {
        Ok(l) => l,
        Err(e) => return Ok(Err(e.to_string())),
    };
    let mut buf = Vec::new();
    let mut i = 0;
    while i < layout.segments() {
        // Whole segments, about a megabyte of them per read.
        let first = layout.segment(i);
        let mut last = i;
        while last + 1 < layout.segments()
            && layout.segment(last + 1).offset + layout.segment(last + 1).len as u64 - first.offset <= 1 << 20
        {
            last += 1;
        }
        let end = layout.segment(last);
        buf.resize((end.offset + end.len as u64 - first.offset) as usize, 0);
        backend.read_at(key, &mut buf, first.offset)?;
        for j in i..=last {
            let at = layout.segment(j);
            let from = (at.offset - first.offset) as usize;
            if let Err(e) = envelope::check_segment(j, &at, &buf[from..from + at.len]) {
                return Ok(Err(e.to_string()));
            }
        }
        i = last + 1;
    }
    Ok(Ok(()))
}

/// The restore point whose object `key` is.
fn point_of(key: &str) -> Option<PointId> {
    key.strip_prefix("points/")?.strip_suffix(".point")?.parse().ok()
}
