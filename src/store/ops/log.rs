//! The job log: one small object per finished operation.

use crate::store::backend;
use crate::store::error::{Result, StoreError};
use crate::store::state::handle::Handle;

/// The job log, oldest first: one JSON object per finished operation
/// (`time`, `op`, `host`, `pid`, `report`). Stores made before version
/// 2 kept one `log/jobs.log` file of such lines; they are read too.
pub(crate) fn job_log(store: &Handle) -> Result<Vec<serde_json::Value>> {
    let backend = store.backend();
    let mut entries = Vec::new();
    for key in backend::list_keys(backend, "log").map_err(StoreError::io(backend.describe("log"), "list"))? {
        let bytes = match backend.read_all(&key) {
            Ok(b) => b,
            // Removed since the listing.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(StoreError::io(backend.describe(&key), "read job log")(e)),
        };
        let lines: Vec<&[u8]> =
            if key.ends_with(".log") { bytes.split(|&b| b == b'\n').collect() } else { vec![&bytes] };
        for line in lines.into_iter().filter(|l| !l.is_empty()) {
            let entry: serde_json::Value = serde_json::from_slice(line)
                .map_err(|e| StoreError::corrupt(backend.describe(&key), "job log entry", 0, e.to_string()))?;
            entries.push(entry);
        }
    }
    entries.sort_by(|a, b| a["time"].as_str().cmp(&b["time"].as_str()));
    Ok(entries)
}
