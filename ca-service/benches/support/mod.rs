//! Helpers shared by the bench binaries (a subdirectory, so Cargo does not take it for a bench).

/// The CPU model `/proc/cpuinfo` names, for the reports.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|line| line.starts_with("model name"))
                .and_then(|line| line.split(':').nth(1))
                .map(|model| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// CPU time (user + system) process `pid` has used so far, in seconds, from `/proc/PID/stat`;
/// `None` when the process is gone. Robust against other load on the machine, unlike rates.
#[allow(
    dead_code,
    reason = "each bench binary compiles this module and uses only some of it"
)]
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start at field 3; utime and stime are
    // fields 14 and 15, in clock ticks of USER_HZ, which Linux fixes at 100 for user space.
    let after_name = &stat[stat.rfind(')')? + 2..];
    let mut fields = after_name.split_whitespace().skip(11);
    let user_ticks: f64 = fields.next()?.parse().ok()?;
    let system_ticks: f64 = fields.next()?.parse().ok()?;
    Some((user_ticks + system_ticks) / 100.0)
}

/// CPU time (user + system) used so far by every process whose command name is `name` (for
/// example PostgreSQL's server processes, `postgres`), in seconds. A process that exits between
/// two readings takes its time with it: read around a window in which the processes persist.
#[allow(
    dead_code,
    reason = "each bench binary compiles this module and uses only some of it"
)]
pub fn cpu_seconds_of_command(name: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .filter_map(Result::ok)
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim_end() == name))
        .filter_map(cpu_seconds)
        .sum()
}
