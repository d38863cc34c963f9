//! Bounds a backup keeps its memory within; a store holds one set, tests
//! set small ones to reach the paths a large disk would.

/// What keeps a backup's memory flat however large the disk.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// New chunks remembered within one job: repeats further apart than
    /// this many new chunks may be stored twice (vacuum keeps one copy).
    pub claimed: usize,
    /// Index entries written out to an index file once this many sealed
    /// ones have gathered.
    pub index_flush: usize,
}

impl Limits {
    /// 8 MiB of remembered ids; 4 MiB of pending index entries (32 GiB of
    /// new data at 512 KiB chunks).
    pub const DEFAULT: Limits = Limits { claimed: 1 << 18, index_flush: 1 << 16 };
}
