//! Process groups outside any daemon, and run-directory records naming
//! them, for the tests of the start-up sweep of what a killed daemon left.

use std::{os::unix::process::CommandExt, path::Path};

/// A `sleep` leading a process group of its own, as a stdio server's group
/// would be; killed (its group) and reaped when dropped.
pub struct GroupLeader {
    child: std::process::Child,
}

impl GroupLeader {
    pub fn spawn() -> GroupLeader {
        let child = std::process::Command::new("sleep")
            .arg("1000")
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .spawn()
            .expect("spawning sleep");
        GroupLeader { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Its start time as `/proc/PID/stat` gives it (field 22).
    pub fn start_time(&self) -> u64 {
        start_time(self.pid())
    }
}

impl Drop for GroupLeader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Field 22 of `/proc/PID/stat`, counted after the command name's `)`.
pub fn start_time(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/PID/stat");
    let (_, rest) = stat.rsplit_once(')').expect("a command name");
    rest.split_whitespace()
        .nth(22 - 3)
        .and_then(|field| field.parse().ok())
        .expect("field 22")
}

/// Writes a record as a dead daemon (no one holds its lock) would have left
/// it in `run_dir`: one `PGID STARTTIME` line per group. Returns its path.
pub fn dead_record(run_dir: &Path, groups: &[(u32, u64)]) -> std::path::PathBuf {
    std::fs::create_dir_all(run_dir).expect("run dir");
    let path = run_dir.join(format!("children-1-{}", uuid::Uuid::new_v4().simple()));
    let lines: String = groups
        .iter()
        .map(|(pgid, started)| format!("{pgid} {started}\n"))
        .collect();
    std::fs::write(&path, lines).expect("writing a record");
    path
}

/// The record files in `run_dir`.
pub fn records(run_dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(entries) = std::fs::read_dir(run_dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("children-"))
        .map(|entry| entry.path())
        .collect()
}
