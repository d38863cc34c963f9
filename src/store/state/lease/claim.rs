//! Maintenance claims: numbered objects `locks/maintenance/<n>.claim`,
//! created put-if-absent, that decide who holds maintenance without
//! comparing anyone's clock (see the module above).


use serde::{Deserialize, Serialize};

use crate::store::backend::{Backend, put_new};
use crate::store::error::{Result, StoreError};
use crate::store::model::layout::{CLAIMS, claim_key};
use crate::store::state::lease::{Lease, LeaseMode, MAX_LEASE_OBJECT, io, lease_info};


/// What a maintenance claim holds: whose it is.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct ClaimRecord {
    lease: String,
    op: String,
    host: String,
    pid: u32,
}

/// The outcome of trying to claim maintenance.
pub(super) enum Claim {
    /// This lease holds maintenance.
    Won,
    /// Someone else does: who, for the message.
    Held(String),
}

/// The claims there are, by number.
pub(super) fn list_claims(backend: &dyn Backend) -> Result<Vec<u64>> {
    let listed = match backend.list(CLAIMS) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        other => other.map_err(io(backend, CLAIMS, "list maintenance claims"))?,
    };
    let mut numbers: Vec<u64> = listed
        .iter()
        .filter_map(|o| o.key.strip_prefix(CLAIMS)?.strip_prefix('/')?.strip_suffix(".claim")?.parse().ok())
        .collect();
    numbers.sort_unstable();
    Ok(numbers)
}

/// Who holds claim `n`, if its holder may still be at work: its lease is
/// listed, fresh, and not held by a process known to be gone. A claim that
/// does not parse names nobody (it can only have been written by hand).
fn live_holder(backend: &dyn Backend, me: &Lease, n: u64) -> Result<Option<String>> {
    let key = claim_key(n);
    let record: ClaimRecord = match crate::store::backend::read_small(backend, &key, MAX_LEASE_OBJECT) {
        Ok(bytes) => match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(_) => return Ok(None),
        },
        // Gone, or too large to be one of ours: it names nobody.
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::InvalidData) => {
            return Ok(None);
        }
        Err(e) => return Err(io(backend, &key, "read maintenance claim")(e)),
    };
    if record.lease == me.inner.id {
        return Ok(None);
    }
    // Only the holder's own folder: listing every lease would leave a
    // window for its refresh to hide it.
    let Some(holder) = lease_info(backend, &record.lease)? else { return Ok(None) };
    let now = me.server_now();
    let alive = holder.record.mode == LeaseMode::Maintenance
        && holder.fresh(now, &me.inner.settings)
        && holder.holder_may_run();
    Ok(alive.then(|| format!("{} (pid {} on {})", record.op, record.pid, record.host)))
}

/// Claims maintenance for `lease` (see the module documentation): the
/// storage's put-if-absent decides between racers, never a clock.
pub(super) fn claim_maintenance(lease: &Lease) -> Result<Claim> {
    let backend = &*lease.inner.backend;
    let mine = {
        let st = lease.inner.state();
        ClaimRecord {
            lease: lease.inner.id.clone(),
            op: st.record.op.clone(),
            host: st.record.host.clone(),
            pid: st.record.pid,
        }
    };
    let bytes = serde_json::to_vec(&mine).unwrap_or_default();
    // Each lost race means another claim was made meanwhile: look again,
    // a bounded number of times (a live winner makes the next look "busy").
    for _ in 0..64 {
        let claims = list_claims(backend)?;
        let top = claims.last().copied();
        if let Some(n) = top
            && let Some(holder) = live_holder(backend, lease, n)?
        {
            return Ok(Claim::Held(holder));
        }
        // A claim number at the top of u64 can only have been planted.
        let Some(next) = top.map_or(Some(0), |n| n.checked_add(1)) else {
            return Err(StoreError::UnsupportedStore {
                path: backend.describe(CLAIMS),
                reason: format!("maintenance claim {} is the largest number there is: remove it", claim_key(u64::MAX)),
            });
        };
        let key = claim_key(next);
        match put_new(backend, &key, &bytes) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(backend, &key, "claim maintenance")(e)),
        }
        // A racer whose listing predates a clean-up can recreate a number
        // far below the top: whoever is not highest yields.
        let after = list_claims(backend)?;
        if let Some(&higher) = after.iter().rev().find(|&&n| n > next) {
            let _ = backend.delete(&key);
            if let Some(holder) = live_holder(backend, lease, higher)? {
                return Ok(Claim::Held(holder));
            }
            continue;
        }
        for old in after.into_iter().filter(|&n| n.saturating_add(2) <= next) {
            let _ = backend.delete(&claim_key(old));
        }
        return Ok(Claim::Won);
    }
    // A lost race ends in a live holder at the next look; 64 in a row
    // without one is claims being made and removed under us: say so,
    // rather than wait on it forever.
    Err(StoreError::StoreBusy {
        path: backend.describe(CLAIMS),
        holder: "nobody live, yet 64 maintenance claims in a row were lost: look at locks/maintenance/".into(),
    })
}
