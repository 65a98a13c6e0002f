//! What this host has room for: free space in `/dev/shm` and available memory.

use crate::Failure;

/// Free bytes in `/dev/shm`.
pub fn shm_free() -> Result<u64, Failure> {
    let stat = rustix::fs::statvfs("/dev/shm")
        .map_err(|e| Failure::new(format!("statvfs /dev/shm: {e}")))?;
    Ok(stat.f_bavail.saturating_mul(stat.f_frsize))
}

/// `MemAvailable` from `/proc/meminfo`, if it can be read.
pub fn memory_available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}
