//! Retention: which backups of a name to keep, and dropping the rest.
//!
//! Order: every kept backup whose chain reaches a backup to drop (before it
//! reaches another kept one) is first merged into a full backup, oldest
//! first (each merge commits on its own); only then are the dropped backups
//! tombstoned (`dropped/<id>`), which uncommits them. A restore point is
//! kept or dropped whole: its tombstone uncommits all of its disks at once.
//! Prune deletes nothing: vacuum's second phase deletes what is dropped once
//! no lease that could still use it remains (a backup that started from a
//! dropped backup keeps it as its parent). A crash at any point leaves
//! every listed backup restorable. Chunks are not touched.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use serde::Serialize;

use crate::store::backend::Traffic;
use crate::store::backend::put_new;
use crate::store::error::{Result, StoreError};
use crate::store::model::id::{BackupId, PointId};
use crate::store::model::time::Moment;
use crate::store::state::chain::ChainWalk;
use crate::store::state::handle::Handle;
use crate::store::state::lease::{LeaseMode, tombstone_key};

/// Which backups to keep: the union of every rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Retention {
    /// The newest N backups.
    pub keep_last: usize,
    /// The newest backup of each of the N most recent days with backups.
    pub keep_daily: usize,
    /// The newest backup of each of the N most recent ISO weeks with backups.
    pub keep_weekly: usize,
    /// The newest backup of each of the N most recent months with backups.
    pub keep_monthly: usize,
}

impl Retention {
    /// Keep the newest `n` (and nothing else, unless more rules are set).
    pub fn keep_last(n: usize) -> Retention {
        Retention { keep_last: n, ..Default::default() }
    }

    fn keeps_nothing(&self) -> bool {
        self.keep_last + self.keep_daily + self.keep_weekly + self.keep_monthly == 0
    }
}

/// How to prune.
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct PruneOptions {
    /// What to keep.
    pub policy: Retention,
    /// Report what would be done, change nothing.
    pub dry_run: bool,
    /// Wait for running backups instead of failing with `StoreBusy`.
    pub wait: bool,
}

impl PruneOptions {
    /// Prune to `policy`.
    pub fn new(policy: Retention) -> PruneOptions {
        PruneOptions { policy, ..Default::default() }
    }
}

/// What prune did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[non_exhaustive]
pub struct PruneReport {
    /// The name pruned.
    pub name: String,
    /// Backups kept.
    pub kept: Vec<BackupId>,
    /// Backups dropped (every disk of a dropped restore point among them).
    pub dropped: Vec<BackupId>,
    /// Restore points dropped.
    pub dropped_points: Vec<PointId>,
    /// Kept backups made full because their chain ran through a dropped one.
    pub merged: Vec<BackupId>,
    /// Nothing was changed.
    pub dry_run: bool,
    /// Requests made and bytes uploaded (`requests`, `bytes_uploaded` in JSON).
    #[serde(flatten)]
    pub traffic: Traffic,
}

/// Keeps the newest backup of each of the `n` most recent periods.
fn keep_periods<K: PartialEq>(
    newest_first: &[(String, Moment)],
    n: usize,
    period: impl Fn(&Moment) -> K,
    keep: &mut BTreeSet<String>,
) {
    let mut last: Option<K> = None;
    let mut periods = 0;
    for (id, at) in newest_first {
        if periods >= n {
            break;
        }
        let p = period(at);
        if last.as_ref() != Some(&p) {
            keep.insert(id.clone());
            periods += 1;
            last = Some(p);
        }
    }
}

/// The ids to keep among `backups` (id, creation time), per `policy`.
pub(crate) fn select(backups: &[(String, Moment)], policy: &Retention) -> BTreeSet<String> {
    let mut newest_first: Vec<(String, Moment)> = backups.to_vec();
    newest_first.sort_by(|a, b| b.1.cmp(&a.1).then(b.0.cmp(&a.0)));
    let mut keep: BTreeSet<String> = newest_first.iter().take(policy.keep_last).map(|(id, _)| id.clone()).collect();
    keep_periods(&newest_first, policy.keep_daily, Moment::day, &mut keep);
    // ISO weeks start on Monday; day 0 (1970-01-01) was a Thursday.
    keep_periods(&newest_first, policy.keep_weekly, |m| (m.day() + 3).div_euclid(7), &mut keep);
    keep_periods(&newest_first, policy.keep_monthly, Moment::year_month, &mut keep);
    keep
}

/// [`Store::prune`](crate::store::Store::prune).
pub(crate) fn prune(store: &Handle, name: &str, options: &PruneOptions) -> Result<PruneReport> {
    store.require_writable()?;
    if options.policy.keeps_nothing() {
        return Err(StoreError::Invalid("the policy keeps nothing; refusing to drop every backup".into()));
    }
    let t0 = store.backend().traffic();
    let _lease = store.lease(LeaseMode::Maintenance, "prune", options.wait)?;
    let catalog = crate::store::state::catalog::catalog(store)?.strict()?;
    // Units: a restore point, or a backup of its own.
    let mut units: BTreeMap<String, (Moment, Option<PointId>, Vec<BackupId>)> = BTreeMap::new();
    for b in catalog.backups.iter().filter(|b| b.name == name) {
        let (key, created) = match &b.point {
            Some(p) => {
                let created = catalog.points.iter().find(|x| &x.id == p).map_or(b.created, |x| x.created);
                (format!("p:{p}"), created)
            }
            None => (format!("b:{}", b.id), b.created),
        };
        units.entry(key).or_insert_with(|| (created, b.point.clone(), Vec::new())).2.push(b.id.clone());
    }
    if units.is_empty() {
        return Err(StoreError::NoSuchBackup(name.to_string()));
    }
    let by_time: Vec<(String, Moment)> = units.iter().map(|(k, (t, _, _))| (k.clone(), *t)).collect();
    let keep_units = select(&by_time, &options.policy);
    let (mut kept, mut dropped, mut dropped_points) = (Vec::new(), Vec::new(), Vec::new());
    for (key, (_, point, ids)) in &units {
        if keep_units.contains(key) {
            kept.extend(ids.iter().cloned());
        } else {
            dropped.extend(ids.iter().cloned());
            dropped_points.extend(point.iter().cloned());
        }
    }
    // Newest first, so children go before their parents (ids sort by time).
    let created = |id: &BackupId| catalog.backups.iter().find(|b| &b.id == id).map(|b| b.created);
    dropped.sort_by(|a, b| created(b).cmp(&created(a)).then(b.cmp(a)));
    kept.sort();
    // Kept backups whose chain reaches a dropped one before a kept one
    // (a kept ancestor is itself made independent, oldest first).
    let kept_set: HashSet<&BackupId> = kept.iter().collect();
    let dropped_set: HashSet<&BackupId> = dropped.iter().collect();
    let mut merged = Vec::new();
    for id in &kept {
        for h in ChainWalk::new(store.backend(), id).skip(1) {
            let h = h?;
            if kept_set.contains(&h.id) {
                break;
            }
            if dropped_set.contains(&h.id) {
                merged.push(id.clone());
                break;
            }
        }
    }
    let mut report = PruneReport {
        name: name.into(),
        kept,
        dropped,
        dropped_points,
        merged,
        dry_run: options.dry_run,
        traffic: Traffic::default(),
    };
    if options.dry_run {
        report.traffic = store.backend().traffic().since(t0);
        return Ok(report);
    }
    for id in &report.merged {
        crate::store::state::chain::write_merged(store.backend(), id)?;
    }
    // Dropping is a tombstone, not a delete: from its creation the backup
    // (or the whole restore point) is no longer committed, and vacuum's
    // second phase deletes its objects once no lease that could still
    // use them remains.
    let backend = store.backend();
    let tombstone = |id: &str| {
        let key = tombstone_key(id);
        match put_new(backend, &key, b"dropped by prune") {
            Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => {
                Err(StoreError::io(backend.describe(&key), "write tombstone")(e))
            }
            _ => Ok(()),
        }
    };
    for p in &report.dropped_points {
        tombstone(p.as_str())?;
    }
    let in_points: HashSet<&BackupId> = catalog
        .backups
        .iter()
        .filter(|b| b.point.as_ref().is_some_and(|p| report.dropped_points.contains(p)))
        .map(|b| &b.id)
        .collect();
    for id in report.dropped.iter().filter(|id| !in_points.contains(id)) {
        tombstone(id.as_str())?;
    }
    store.log_job("prune", &serde_json::to_value(&report).unwrap_or_default());
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64, hour: i64) -> Moment {
        Moment::from_unix(day * 86_400 + hour * 3600, 0)
    }

    #[test]
    fn retention_keeps_the_newest_of_each_period() {
        // 2026-01-05 is a Monday: day 20458.
        let monday = crate::store::model::time::days_from_civil(2026, 1, 5);
        let backups: Vec<(String, Moment)> =
            (0..20).map(|i| (format!("b{i:02}"), at(monday + i / 2, 6 + 12 * (i % 2)))).collect();
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let last2 = select(&backups, &Retention { keep_last: 2, ..Default::default() });
        assert_eq!(last2, ids(&["b18", "b19"]));
        let daily3 = select(&backups, &Retention { keep_daily: 3, ..Default::default() });
        assert_eq!(daily3, ids(&["b15", "b17", "b19"]));
        // Days 0-6 are week 1 (b00..b13), days 7-9 week 2 (b14..b19).
        let weekly2 = select(&backups, &Retention { keep_weekly: 2, ..Default::default() });
        assert_eq!(weekly2, ids(&["b13", "b19"]));
        let monthly = select(&backups, &Retention { keep_monthly: 5, ..Default::default() });
        assert_eq!(monthly, ids(&["b19"]));
        let mixed = select(&backups, &Retention { keep_last: 1, keep_daily: 2, keep_weekly: 2, keep_monthly: 1 });
        assert_eq!(mixed, ids(&["b13", "b17", "b19"]));
    }
}
