//! The process's own figures under their customary Prometheus names
//! (`process_cpu_seconds_total`, `process_resident_memory_bytes`, ...), read from
//! `/proc/self` on Linux; elsewhere there are none.

/// CPU, memory and file descriptors of this process.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Process {
    /// User plus system CPU time, seconds.
    pub cpu_seconds: f64,
    /// Resident set size, bytes.
    pub resident_bytes: u64,
    /// Virtual memory size, bytes.
    pub virtual_bytes: u64,
    /// Open file descriptors.
    pub open_fds: u64,
    /// The soft limit on open file descriptors.
    pub max_fds: Option<u64>,
    /// Start time, seconds since the epoch.
    pub start_time_seconds: Option<f64>,
}

/// Clock ticks per second of `/proc/self/stat` (USER_HZ: 100 on every Linux
/// architecture hifi builds for).
const TICKS_PER_SECOND: f64 = 100.0;

/// Field `n` (from 1) of `/proc/self/stat`, as read in `stat`.
fn stat_field(stat: &str, n: usize) -> Option<f64> {
    // Fields after the command name (which may hold spaces), from field 3 on.
    let after = stat.get(stat.rfind(')')? + 2..)?;
    after.split_whitespace().nth(n - 3)?.parse().ok()
}

/// User plus system CPU time of this process so far, seconds (`/proc/self/stat` only:
/// cheap enough to read every second).
pub fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    Some((stat_field(&stat, 14)? + stat_field(&stat, 15)?) / TICKS_PER_SECOND)
}

impl Process {
    /// This process now; `None` where `/proc/self` cannot be read.
    pub fn read() -> Option<Process> {
        let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
        let status = std::fs::read_to_string("/proc/self/status").ok()?;
        let field = |n: usize| stat_field(&stat, n);
        let kib = |key: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .map_or(0, |k| k * 1024)
        };
        let boot_time = std::fs::read_to_string("/proc/stat").ok().and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("btime ")?.trim().parse::<f64>().ok())
        });
        let max_fds = std::fs::read_to_string("/proc/self/limits")
            .ok()
            .and_then(|l| {
                l.lines()
                    .find(|l| l.starts_with("Max open files"))?
                    .split_whitespace()
                    .nth(3)?
                    .parse()
                    .ok()
            });
        Some(Process {
            cpu_seconds: (field(14)? + field(15)?) / TICKS_PER_SECOND,
            resident_bytes: kib("VmRSS:"),
            virtual_bytes: kib("VmSize:"),
            open_fds: std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64),
            max_fds,
            start_time_seconds: boot_time
                .zip(field(22))
                .map(|(b, t)| b + t / TICKS_PER_SECOND),
        })
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_memory_files_and_a_start_time() {
        let p = Process::read().unwrap();
        assert!(cpu_seconds().unwrap() >= 0.0);
        assert!(p.resident_bytes > 1 << 20, "{p:?}");
        assert!(p.virtual_bytes >= p.resident_bytes, "{p:?}");
        assert!(p.open_fds >= 3, "{p:?}");
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs_f64();
        let started = p.start_time_seconds.unwrap();
        assert!(
            started <= now + 1.0 && started > now - 86_400.0 * 365.0,
            "{p:?}"
        );
    }
}
