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

/// How readers of chunk data read from a store: how many requests they
/// keep in flight, how far a sequential reader reads ahead, how large one
/// ranged read may grow, and how many decoded chunks are kept.
///
/// Memory of one reader stays below about `2 * read_ahead + cache` plus
/// the chunks of the call being answered: decoded chunks read ahead are
/// at most `read_ahead`, and only those are fetched, so the compressed
/// ranges in flight are at most as large (plus `max_gap` per request).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReadSettings {
    /// Requests in flight.
    pub connections: usize,
    /// Bytes of decoded chunks a sequential reader fetches before they are asked for.
    pub read_ahead: u64,
    /// The largest ranged read: records lying next to each other in a pack
    /// are fetched together up to this many bytes.
    pub max_request: u64,
    /// Records this far apart or less in a pack are fetched in one read
    /// (the bytes between are read and dropped): a request costs more
    /// than that many bytes do.
    pub max_gap: u64,
    /// Bytes of decoded chunks kept once read, for readers that come back
    /// (a file system's metadata, a mount's small reads).
    pub cache: u64,
}

impl ReadSettings {
    /// The default read-ahead: 32 MiB, so four 8 MiB ranges in flight,
    /// and a restore's peak memory near 170 MiB whatever the connections
    /// (twice this window went past 250 MiB, as each reading thread's
    /// allocator keeps what it freed).
    pub const READ_AHEAD: u64 = 32 << 20;

    /// Settings for `connections` requests in flight and `read_ahead`
    /// bytes ahead. A ranged read may span a quarter of the window (1 to
    /// 8 MiB): a request costs tens of milliseconds whatever its size, and
    /// some servers (moto) cost as much per request as the object is
    /// large, so fewer, larger reads win; what is in flight is bounded by
    /// the window, not by the connections.
    pub fn new(connections: usize, read_ahead: u64) -> ReadSettings {
        let connections = connections.clamp(1, 256);
        let read_ahead = read_ahead.clamp(1 << 20, 4 << 30);
        let max_request = (read_ahead / 4).clamp(1 << 20, 8 << 20);
        ReadSettings { connections, read_ahead, max_request, max_gap: 256 << 10, cache: 16 << 20 }
    }
}
