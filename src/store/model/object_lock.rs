//! S3 Object Lock as a store records it: a mode and a number of days.

use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

/// Object Lock settings: every pack, index file, manifest, restore point
/// and the config are written with a retain-until date `days` ahead, and
/// vacuum keeps extending it for what live backups need; nothing is
/// deleted while retained, by us or (in `Compliance` mode) by anyone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ObjectLock {
    /// Days of retention from a write or an extension (1 to 36,500).
    pub days: u32,
    /// The lock's mode.
    pub mode: LockMode,
}

/// S3 Object Lock modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LockMode {
    /// Users with `s3:BypassGovernanceRetention` may still delete.
    Governance,
    /// Nobody can delete or shorten it, not even the account's root user.
    Compliance,
}

impl LockMode {
    /// The name S3 uses.
    pub fn s3_name(self) -> &'static str {
        match self {
            LockMode::Governance => "GOVERNANCE",
            LockMode::Compliance => "COMPLIANCE",
        }
    }
}

impl ObjectLock {
    /// The retention an object written or extended at `now` gets.
    pub fn until(&self, now: SystemTime) -> SystemTime {
        now + Duration::from_secs(u64::from(self.days) * 86_400)
    }
}
