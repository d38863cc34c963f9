//! What this host says about a lease holder on the same machine: which boot
//! of which machine this is, and whether a process that took a lease is
//! gone. Asked of the operating system; everything else in `lease/` is
//! portable.

use crate::store::model::time::Moment;

/// This boot of this machine (and, on Linux, this pid namespace); empty
/// where that cannot be told, and then no lease is judged by its pid.
pub(crate) fn machine_id() -> String {
    static ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ID.get_or_init(imp::machine_id).clone()
}

/// Whether process `pid` of this machine, which took a lease at `first`,
/// has certainly ended. False whenever that cannot be told.
pub(crate) fn process_gone(pid: u32, first: Moment) -> bool {
    imp::process_gone(pid, first)
}

#[cfg(unix)]
mod imp {
    use crate::store::model::time::Moment;

    /// The kernel's boot id and the pid namespace: two containers on one
    /// kernel share the boot but not the pids.
    pub(super) fn machine_id() -> String {
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        let ns = std::fs::read_link("/proc/self/ns/pid").map(|p| p.display().to_string()).unwrap_or_default();
        if boot.trim().is_empty() || ns.is_empty() { String::new() } else { format!("{} {ns}", boot.trim()) }
    }

    pub(super) fn process_gone(pid: u32, _first: Moment) -> bool {
        let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
        if pid <= 0 {
            return false;
        }
        // SAFETY: kill(2) with signal 0 only checks that the process exists.
        let r = unsafe { libc::kill(pid, 0) };
        r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
    }
}

#[cfg(windows)]
mod imp {
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    use windows_sys::Win32::Foundation::{CloseHandle, ERROR_INVALID_PARAMETER, ERROR_SUCCESS, GetLastError, STILL_ACTIVE};
    use windows_sys::Win32::System::Registry::{HKEY_LOCAL_MACHINE, RRF_RT_REG_SZ, RegGetValueW};
    use windows_sys::Win32::System::SystemInformation::GetTickCount64;
    use windows_sys::Win32::System::Threading::{GetExitCodeProcess, OpenProcess, PROCESS_QUERY_LIMITED_INFORMATION};

    use crate::store::model::time::Moment;

    fn wide(s: &str) -> Vec<u16> {
        s.encode_utf16().chain(std::iter::once(0)).collect()
    }

    /// The installation's MachineGuid (set by Windows setup, and by Wine's
    /// wineboot) and the minute the machine booted: the clock now less the
    /// milliseconds since boot, rounded to the minute so processes asking
    /// moments apart agree (a process that lands across a rounding edge
    /// sees another machine, which is the safe answer: its holders are
    /// judged by their lease's age alone).
    pub(super) fn machine_id() -> String {
        let key = wide("SOFTWARE\\Microsoft\\Cryptography");
        let name = wide("MachineGuid");
        let mut buf = [0u16; 80];
        let mut bytes = (buf.len() * 2) as u32;
        // SAFETY: NUL-terminated names, and a buffer of `bytes` bytes.
        let status = unsafe {
            RegGetValueW(
                HKEY_LOCAL_MACHINE,
                key.as_ptr(),
                name.as_ptr(),
                RRF_RT_REG_SZ,
                std::ptr::null_mut(),
                buf.as_mut_ptr().cast(),
                &mut bytes,
            )
        };
        if status != ERROR_SUCCESS {
            return String::new();
        }
        let len = buf.iter().position(|&c| c == 0).unwrap_or(buf.len());
        let guid = String::from_utf16_lossy(&buf[..len]);
        // SAFETY: no arguments.
        let up = Duration::from_millis(unsafe { GetTickCount64() });
        let Some(boot) = SystemTime::now().checked_sub(up) else { return String::new() };
        let minute = boot.duration_since(UNIX_EPOCH).map(|d| (d.as_secs() + 30) / 60).unwrap_or(0);
        if guid.trim().is_empty() { String::new() } else { format!("{} boot-minute {minute}", guid.trim()) }
    }

    /// Gone: no process has the pid, or the one that has it has exited. A
    /// process of another user that we may not open is alive, and so is a
    /// new process that reused the pid (as with `kill(pid, 0)` on Unix):
    /// that holder is judged by its lease's age, the safe way to be wrong.
    /// (Comparing the process's creation time with the lease's start would
    /// catch reuse, but the start is the storage's clock, and a storage
    /// clock behind ours would make a live holder look gone.)
    pub(super) fn process_gone(pid: u32, _first: Moment) -> bool {
        if pid == 0 {
            return false;
        }
        // SAFETY: OpenProcess with a pid; the handle is closed below.
        let handle = unsafe { OpenProcess(PROCESS_QUERY_LIMITED_INFORMATION, 0, pid) };
        if handle.is_null() {
            // SAFETY: no arguments.
            return unsafe { GetLastError() } == ERROR_INVALID_PARAMETER;
        }
        let mut code = 0u32;
        // SAFETY: a live handle and an out-pointer to a local.
        let got = unsafe { GetExitCodeProcess(handle, &mut code) } != 0;
        // SAFETY: the handle OpenProcess gave.
        unsafe { CloseHandle(handle) };
        got && code != STILL_ACTIVE as u32
    }
}

#[cfg(not(any(unix, windows)))]
mod imp {
    use crate::store::model::time::Moment;

    pub(super) fn machine_id() -> String {
        String::new()
    }

    pub(super) fn process_gone(_pid: u32, _first: Moment) -> bool {
        false
    }
}
