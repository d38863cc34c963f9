//! Cancellation: a token a caller keeps and a long operation checks.
//!
//! Backups, restores, exports, verify and vacuum check the token between
//! chunks (or steps of a few MiB), so a cancel takes effect within
//! milliseconds on any disk. A cancelled operation fails with an error whose
//! [`kind`](crate::Error::kind) is [`ErrorKind::Cancelled`](crate::ErrorKind::Cancelled)
//! and commits nothing: what it wrote is unreferenced and the next vacuum
//! removes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// A shared flag: clones observe the same cancellation. The default token is
/// never cancelled (unless someone cancels it).
///
/// ```
/// let token = vhdkit::CancelToken::new();
/// let for_the_signal_handler = token.clone();
/// for_the_signal_handler.cancel();
/// assert!(token.is_cancelled());
/// ```
#[derive(Debug, Clone, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token that is not cancelled.
    pub fn new() -> CancelToken {
        CancelToken::default()
    }

    /// A token over an existing flag, such as one a signal handler sets
    /// (`signal_hook::flag::register`): setting the flag cancels.
    pub fn from_flag(flag: Arc<AtomicBool>) -> CancelToken {
        CancelToken(flag)
    }

    /// Asks every operation holding a clone of this token to stop.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    /// Whether [`CancelToken::cancel`] was called (or the flag set).
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}
