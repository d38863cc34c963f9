//! The store's key namespace, in one place: every folder, what each may
//! hold, how each is treated (sealed in an encrypted store, locked under
//! Object Lock, cached locally, writable without the key, absent when
//! empty), and every key built from an id. Backends ask this module about a
//! key's folder instead of matching string prefixes of their own, so a new
//! folder's policy is decided here once. `docs/store-format.md`, "Folder
//! layout", is the same list for readers of the format.

use crate::store::model::id::{BackupId, PackId, PointId};

/// A top-level folder of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Folder {
    /// Chunk records in packs, each ending in its own index.
    Packs,
    /// Index files: which chunk is in which pack.
    Index,
    /// One manifest per backup (and its merged generations).
    Manifests,
    /// One object per committed restore point.
    Points,
    /// Markers of chunk copies verify found damaged.
    Damaged,
    /// Tombstones of dropped or fenced backups and points.
    Dropped,
    /// Vacuum's condemnation records and their lease lists.
    Condemned,
    /// Leases and maintenance claims.
    Locks,
    /// The job log: one object per finished operation.
    Log,
    /// Files being written (folders only).
    Tmp,
    /// An encrypted store's wrapped master key, one object per key.
    Keys,
}

impl Folder {
    /// Every folder, in the order `store init` makes them.
    pub(crate) const ALL: [Folder; 11] = [
        Folder::Packs,
        Folder::Index,
        Folder::Manifests,
        Folder::Points,
        Folder::Damaged,
        Folder::Dropped,
        Folder::Condemned,
        Folder::Locks,
        Folder::Log,
        Folder::Tmp,
        Folder::Keys,
    ];

    /// The folder's name: also the prefix of its keys, and what a
    /// listing of the folder is asked for.
    pub(crate) const fn name(self) -> &'static str {
        match self {
            Folder::Packs => "packs",
            Folder::Index => "index",
            Folder::Manifests => "manifests",
            Folder::Points => "points",
            Folder::Damaged => "damaged",
            Folder::Dropped => "dropped",
            Folder::Condemned => "condemned",
            Folder::Locks => "locks",
            Folder::Log => "log",
            Folder::Tmp => "tmp",
            Folder::Keys => "keys",
        }
    }

    /// The folder `key` lies in, if it is one of the store's.
    pub(crate) fn of(key: &str) -> Option<Folder> {
        let (first, rest) = key.split_once('/')?;
        if rest.is_empty() {
            return None;
        }
        Folder::ALL.into_iter().find(|f| f.name() == first)
    }

    /// In an encrypted store, whether the folder's objects are envelopes:
    /// everything that says anything about a disk or could hide a backup
    /// (tombstones). Packs seal their records one by one instead; the
    /// config and key objects are read before the key is known; leases and
    /// damage markers say nothing (a forged one can only delay maintenance
    /// or make a restore pass over a sound copy).
    pub(crate) const fn sealed(self) -> bool {
        matches!(
            self,
            Folder::Index | Folder::Manifests | Folder::Points | Folder::Log | Folder::Condemned | Folder::Dropped
        )
    }

    /// Under Object Lock, whether the folder's objects are locked as they
    /// are created: what a restore or an audit needs. Leases, claims,
    /// tombstones and vacuum's records stay deletable by the store.
    pub(crate) const fn locked(self) -> bool {
        matches!(self, Folder::Packs | Folder::Index | Folder::Manifests | Folder::Points | Folder::Keys | Folder::Log)
    }

    /// Whether a remote store's local cache keeps copies of the folder's
    /// objects (immutable metadata a backup or restore reads again).
    pub(crate) const fn cached(self) -> bool {
        matches!(self, Folder::Index | Folder::Manifests | Folder::Points)
    }

    /// Whether an encrypted store opened without its key may write here:
    /// only its own lease, so vacuum knows a verify is running.
    pub(crate) const fn writable_without_key(self) -> bool {
        matches!(self, Folder::Locks)
    }

    /// Whether a store folder may lack this folder when it has nothing in
    /// it (copies made by tools that drop empty folders, git among them).
    /// The data folders must be there: a missing one is a damaged or
    /// unmounted store.
    pub(crate) const fn may_be_absent(self) -> bool {
        !matches!(self, Folder::Packs | Folder::Index | Folder::Manifests)
    }
}

/// The store's settings, written once by init.
pub(crate) const CONFIG: &str = "config";

/// Whether objects under `key` are locked under Object Lock.
pub(crate) fn locked_key(key: &str) -> bool {
    key == CONFIG || Folder::of(key).is_some_and(Folder::locked)
}

/// Whether objects under `key` are envelopes in an encrypted store.
pub(crate) fn sealed_key(key: &str) -> bool {
    Folder::of(key).is_some_and(Folder::sealed)
}

/// A manifest's key: generation 0 is the backup as taken, later ones its
/// merged full generations.
pub(crate) fn manifest_key(id: &BackupId, generation: u32) -> String {
    match generation {
        0 => format!("manifests/{id}.manifest"),
        g => format!("manifests/{id}~{g}.manifest"),
    }
}

/// A restore point's key.
pub(crate) fn point_key(id: &PointId) -> String {
    format!("points/{id}.point")
}

/// The tombstone of a backup or restore point id.
pub(crate) fn tombstone_key(id: &str) -> String {
    format!("dropped/{id}")
}

/// An index file's key, from its random id in hex.
pub(crate) fn index_key(hex: &str) -> String {
    format!("index/{hex}.idx")
}

/// A pack's key, from its id in hex (32 digits): packs are spread over
/// 256 folders by their first two.
pub(crate) fn pack_key(hex: &str) -> String {
    let fan = hex.get(..2).unwrap_or("00");
    format!("packs/{fan}/{hex}.pack")
}

/// The marker of a damaged copy: chunk id and pack id in hex.
pub(crate) fn damaged_key(chunk_hex: &str, pack_hex: &str) -> String {
    format!("damaged/{chunk_hex}.{pack_hex}")
}

/// A lease object: lease id and refresh sequence.
pub(crate) fn lease_key(id: &str, seq: u64) -> String {
    format!("{}/{seq}.lease", lease_folder(id))
}

/// The folder of lease `id`'s objects.
pub(crate) fn lease_folder(id: &str) -> String {
    format!("locks/{id}")
}

/// The object `store init` creates twice to see whether the storage
/// honours put-if-absent (then deletes).
pub(crate) fn probe_key(hex: &str) -> String {
    format!("locks/probe-{hex}")
}

/// Where maintenance claims live.
pub(crate) const CLAIMS: &str = "locks/maintenance";

/// A maintenance claim, zero-padded so that a listing sorted by key is
/// sorted by number.
pub(crate) fn claim_key(n: u64) -> String {
    format!("{CLAIMS}/{n:020}.claim")
}

/// A job-log entry, named by a time-ordered id.
pub(crate) fn log_key(id: &BackupId) -> String {
    format!("log/{id}.json")
}

/// A key object's key, from its id.
pub(crate) fn key_object_key_of(id: &str) -> String {
    format!("keys/{id}.key")
}

/// A pack's key is the layout's business: the id knows only its hex.
impl PackId {
    /// The pack's key in the store.
    pub fn key(&self) -> String {
        pack_key(&self.to_hex())
    }

    /// The pack id in a key `packs/XX/<id>.pack`.
    pub fn from_key(key: &str) -> Option<PackId> {
        let name = key.strip_prefix("packs/")?.split('/').nth(1)?.strip_suffix(".pack")?;
        PackId::from_hex(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_lies_in_its_folder_with_that_folders_policy() {
        let b: BackupId = "20260101T000000.000000Z-0badc0de".parse().unwrap();
        let p: PointId = "20260101T000000.000000Z-c0ffee00".parse().unwrap();
        let cases = [
            (manifest_key(&b, 0), Folder::Manifests),
            (manifest_key(&b, 2), Folder::Manifests),
            (point_key(&p), Folder::Points),
            (tombstone_key("x"), Folder::Dropped),
            (index_key("ab"), Folder::Index),
            (pack_key("ab12"), Folder::Packs),
            (damaged_key("aa", "bb"), Folder::Damaged),
            (lease_key("l", 3), Folder::Locks),
            (claim_key(7), Folder::Locks),
            (log_key(&b), Folder::Log),
            (key_object_key_of("k"), Folder::Keys),
        ];
        for (key, folder) in cases {
            assert_eq!(Folder::of(&key), Some(folder), "{key}");
            assert_eq!(sealed_key(&key), folder.sealed(), "{key}");
            assert_eq!(locked_key(&key), folder.locked(), "{key}");
        }
        assert!(locked_key(CONFIG) && !sealed_key(CONFIG));
        assert_eq!(Folder::of("packsx/a"), None);
        assert_eq!(Folder::of("packs/"), None);
        assert_eq!(pack_key("ab12"), "packs/ab/ab12.pack");
        assert!(claim_key(7) < claim_key(10), "claims sort by number");
    }
}
