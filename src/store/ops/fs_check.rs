//! Checking the file systems inside a backup (`verify --filesystems`): a
//! restore test without a hypervisor. Opens the backup as a disk, hands it
//! to [`crate::fs::check_disk`], and records the outcome in the job log.
//!
//! May import: the layers below `ops` and `crate::fs`.

use std::sync::Arc;

use crate::fs::{CheckOptions, CheckReport};
use crate::store::state::backup_reader::reader_with;
use crate::store::state::handle::Handle;

/// [`Store::verify_filesystems`](crate::store::Store::verify_filesystems).
pub(crate) fn verify_filesystems(
    store: &Handle,
    spec: &str,
    disk: Option<&str>,
    options: &CheckOptions,
) -> crate::Result<Vec<CheckReport>> {
    let lease = store.read_lease("verify")?;
    let id = crate::store::state::catalog::resolve_backup(store, spec, disk)?.id;
    let index = Arc::new(store.index_avoiding_condemned()?);
    let reader = reader_with(store, &id, index, lease)?;
    let reports = crate::fs::check_disk(Arc::new(reader), options)?;
    let summary: Vec<serde_json::Value> = reports
        .iter()
        .map(|r| {
            serde_json::json!({
                "partition": r.partition,
                "filesystem": r.filesystem,
                "files": r.files,
                "folders": r.folders,
                "files_read": r.files_read,
                "bytes_read": r.bytes_read,
                "unsupported": r.unsupported.len(),
                "problems": r.problems,
                "skipped": r.skipped,
            })
        })
        .collect();
    let ok = reports.iter().all(CheckReport::ok);
    let log = serde_json::json!({ "backup": id, "ok": ok, "against_source": options.against.is_some(), "partitions": summary });
    store.log_job("verify-filesystems", &log);
    Ok(reports)
}
