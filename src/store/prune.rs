//! Retention: which backups of a name to keep, and dropping the rest.
//!
//! Order: every kept backup whose chain reaches a backup to drop (before it
//! reaches another kept one) is first merged into a full backup, oldest
//! first (each merge commits atomically); only then are the dropped
//! manifests deleted, newest first, so a dropped backup is never left
//! behind without its parent. A crash at any point leaves every listed
//! backup restorable: kept ones as they were or full, dropped ones with
//! their whole chain or gone. Chunks are not touched; vacuum reclaims them.

use std::collections::BTreeSet;

use serde::Serialize;

use super::Store;
use super::backend::LockMode;
use super::error::{Result, StoreError};
use super::manifest::{Kind, manifest_key};
use super::time::Moment;

/// Which backups to keep: the union of every rule.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
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

/// What prune did (or, dry, would do).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PruneReport {
    pub name: String,
    pub kept: Vec<String>,
    pub dropped: Vec<String>,
    /// Kept backups made full because their chain ran through a dropped one.
    pub merged: Vec<String>,
    pub dry_run: bool,
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

impl Store {
    /// Applies `policy` to the backups named `name` (exclusive lock; waits
    /// for it when `wait`). With `dry_run`, changes nothing.
    pub fn prune(&self, name: &str, policy: &Retention, dry_run: bool, wait: bool) -> Result<PruneReport> {
        if policy.keep_last + policy.keep_daily + policy.keep_weekly + policy.keep_monthly == 0 {
            return Err(StoreError::Invalid("the policy keeps nothing; refusing to drop every backup".into()));
        }
        let _lock = self.lock(LockMode::Exclusive, wait)?;
        let all = self.list()?;
        let mine: Vec<(String, Moment)> = all
            .iter()
            .filter(|b| b.name == name)
            .map(|b| (b.id.clone(), Moment::parse(&b.created).unwrap_or(Moment { secs: 0, micros: 0 })))
            .collect();
        if mine.is_empty() {
            return Err(StoreError::NoSuchBackup(name.to_string()));
        }
        let keep = select(&mine, policy);
        let dropped: Vec<String> = mine.iter().map(|(id, _)| id.clone()).filter(|id| !keep.contains(id)).collect();
        // Kept backups whose chain reaches a dropped one before a kept one
        // (a kept ancestor is itself made independent, oldest first).
        let mut merged = Vec::new();
        for id in &keep {
            let mut next = self.header(id)?.parent;
            let mut seen = std::collections::HashSet::new();
            while let Some(p) = next {
                // Parent links that loop (a damaged or hostile store) would
                // walk forever.
                if !seen.insert(p.clone()) {
                    return Err(StoreError::Invalid(format!("the chain of backup {id} loops at {p}")));
                }
                if keep.contains(&p) {
                    break;
                }
                if dropped.contains(&p) {
                    merged.push(id.clone());
                    break;
                }
                let h = self.header(&p)?;
                next = h.parent.filter(|_| h.kind == Kind::Incremental);
            }
        }
        let report = PruneReport { name: name.into(), kept: keep.into_iter().collect(), dropped, merged, dry_run };
        if dry_run {
            return Ok(report);
        }
        for id in &report.merged {
            self.merge_locked(id)?;
        }
        // Newest first: children go before their parents.
        for id in report.dropped.iter().rev() {
            let key = manifest_key(id);
            self.backend().delete(&key).map_err(StoreError::io(self.backend().describe(&key), "delete manifest"))?;
        }
        self.log_job("prune", &serde_json::to_value(&report).unwrap_or_default());
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(day: i64, hour: i64) -> Moment {
        Moment { secs: day * 86_400 + hour * 3600, micros: 0 }
    }

    #[test]
    fn retention_keeps_the_newest_of_each_period() {
        // 2026-01-05 is a Monday: day 20458.
        let monday = super::super::time::days_from_civil(2026, 1, 5);
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
