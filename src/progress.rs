//! Progress reports for long operations.
//!
//! Backup, restore, export, verify and vacuum call a [`ProgressSink`] from
//! the thread that runs them, a few times a second and once at the end, with
//! the bytes done and the total. The callback must be quick: the operation
//! waits for it.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Which operation a report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Operation {
    /// Reading a disk into the store.
    Backup,
    /// Writing a backup out of the store.
    Restore,
    /// Writing an image (any [`VirtualDisk`](crate::VirtualDisk)) to a file.
    Export,
    /// Checking every record of the store.
    Verify,
    /// Marking, copying and deleting in vacuum.
    Vacuum,
}

/// How far an operation has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Progress {
    /// What is running.
    pub operation: Operation,
    /// Which disk of a multi-disk job (0 for single-disk operations).
    pub item: usize,
    /// How many disks the job has (1 for single-disk operations).
    pub items: usize,
    /// Bytes handled so far (read, skipped or inherited; for verify and
    /// vacuum, bytes of packs checked or copied).
    pub bytes_done: u64,
    /// Bytes the operation will handle in all (0 when unknown yet).
    pub bytes_total: u64,
}

impl Progress {
    /// A report for a single-item operation.
    pub fn new(operation: Operation, bytes_done: u64, bytes_total: u64) -> Progress {
        Progress { operation, item: 0, items: 1, bytes_done, bytes_total }
    }

    /// The same report for item `item` of `items`.
    pub fn of_item(mut self, item: usize, items: usize) -> Progress {
        self.item = item;
        self.items = items;
        self
    }
}

type Callback = dyn Fn(Progress) + Send + Sync;

/// Where progress reports go: nowhere (the default) or a callback.
#[derive(Clone, Default)]
pub struct ProgressSink {
    callback: Option<Arc<Callback>>,
    item: Option<(usize, usize)>,
}

impl std::fmt::Debug for ProgressSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProgressSink").field("callback", &self.callback.is_some()).field("item", &self.item).finish()
    }
}

impl ProgressSink {
    /// Reports go to `callback`.
    pub fn new(callback: impl Fn(Progress) + Send + Sync + 'static) -> ProgressSink {
        ProgressSink { callback: Some(Arc::new(callback)), item: None }
    }

    /// Reports go nowhere.
    pub fn none() -> ProgressSink {
        ProgressSink::default()
    }

    /// Whether anyone listens.
    pub fn is_some(&self) -> bool {
        self.callback.is_some()
    }

    /// The same sink, stamping every report as item `item` of `items` (a
    /// multi-disk job hands each disk's backup one of these).
    pub fn for_item(&self, item: usize, items: usize) -> ProgressSink {
        ProgressSink { callback: self.callback.clone(), item: Some((item, items)) }
    }

    /// Sends a report now.
    pub fn report(&self, progress: Progress) {
        if let Some(cb) = &self.callback {
            let p = match self.item {
                Some((i, n)) => progress.of_item(i, n),
                None => progress,
            };
            cb(p);
        }
    }

    /// A throttle over this sink: at most one report per interval, plus the
    /// final one.
    pub(crate) fn throttled(&self, operation: Operation, bytes_total: u64) -> Throttled<'_> {
        Throttled { sink: self, operation, bytes_total, last: None }
    }
}

/// Reports at most every 200 ms (see [`ProgressSink::throttled`]).
pub(crate) struct Throttled<'a> {
    sink: &'a ProgressSink,
    operation: Operation,
    bytes_total: u64,
    last: Option<Instant>,
}

impl Throttled<'_> {
    const INTERVAL: Duration = Duration::from_millis(200);

    /// Reports `done` if the interval has passed since the last report;
    /// returns whether it had (callers piggyback periodic checks on it).
    pub(crate) fn tick(&mut self, done: u64) -> bool {
        let now = Instant::now();
        if self.last.is_some_and(|t| now.duration_since(t) < Self::INTERVAL) {
            return false;
        }
        self.last = Some(now);
        self.sink.report(Progress::new(self.operation, done.min(self.bytes_total), self.bytes_total));
        true
    }

    /// Reports completion.
    pub(crate) fn finish(&mut self) {
        self.sink.report(Progress::new(self.operation, self.bytes_total, self.bytes_total));
    }
}
