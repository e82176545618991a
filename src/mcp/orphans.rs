//! Process groups a daemon killed outright (SIGKILL, the OOM killer) leaves
//! behind. The parent-death signal reaches each stdio server but not what
//! the server spawned (npx → node, a shell's jobs, a forked worker), and
//! those stay in the server's process group. So every daemon records its
//! children's groups in the run directory, and a daemon starting up kills
//! the groups in the records of daemons that are dead.
//!
//! A record is a file `children-<pid>-<id>` that its daemon holds an
//! exclusive `flock` on for its whole life. The kernel drops the lock with
//! the process, so a lock that can be taken means the owner is dead: several
//! daemons (in one process, as in the tests, or many) can share a run
//! directory. It is a local file, not a table, because process groups are
//! local to a machine and the database may be shared by replicas on others.
//!
//! Lines are only appended: `PGID STARTTIME` when a child starts (its start
//! time in clock ticks since boot, field 22 of `/proc/PID/stat`, tells a
//! recycled pid apart) and `-PGID` once teardown has killed its group. A line
//! counts only when whole, newline included, so a write cut short never names
//! a group.

// Without /proc nothing is recorded or swept: only `open`'s early return is
// used there.
#![cfg_attr(not(target_os = "linux"), allow(dead_code, unused_imports))]

use std::{
    collections::{BTreeMap, HashMap},
    fs::{File, OpenOptions},
    io::{self, Read},
    os::{
        fd::AsRawFd,
        unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt},
    },
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
};

use super::{McpError, metrics::McpMetrics};

/// Names of record files start with this.
const PREFIX: &str = "children-";

/// `-PGID` lines written before the record is rewritten with only the
/// groups alive (a long-lived daemon starts and ends many children).
const REWRITE_AFTER: usize = 1024;

/// This daemon's record of its children's process groups.
pub(super) struct GroupRecord(Mutex<Option<RecordFile>>);

impl GroupRecord {
    /// No record: nothing is written, nothing swept (no run directory, as
    /// for commands that start no server, or no /proc).
    pub(super) fn off() -> Arc<GroupRecord> {
        Arc::new(GroupRecord(Mutex::new(None)))
    }

    /// Kills what dead daemons' records in `dir` name, then starts this
    /// daemon's own record there. `dir` is created (mode 0700) when missing;
    /// one that cannot be used is an error naming it.
    pub(super) fn open(dir: &Path, metrics: &McpMetrics) -> Result<Arc<GroupRecord>, McpError> {
        if cfg!(not(target_os = "linux")) {
            return Ok(GroupRecord::off());
        }
        let unusable = |error: io::Error| McpError::RunDir {
            path: dir.to_owned(),
            error,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(unusable)?;
        let swept = sweep(dir).map_err(unusable)?;
        metrics.groups_swept(swept.killed);
        tracing::info!(
            run_dir = %dir.display(),
            records = swept.records,
            killed = swept.killed,
            already_gone = swept.gone,
            recycled = swept.recycled,
            failed = swept.failed,
            "swept {} process groups a previous mcpd left",
            swept.killed
        );
        let record = RecordFile::create(dir).map_err(unusable)?;
        Ok(Arc::new(GroupRecord(Mutex::new(Some(record)))))
    }

    /// A child leading group `pgid` has started. Never fails: a record that
    /// cannot be written costs the sweep of this group after a SIGKILL, not
    /// the server.
    pub(super) fn started(&self, pgid: i32) {
        let Some(started) = start_time(pgid) else {
            tracing::debug!(
                pgid,
                "no start time for a stdio MCP server's process group; not recorded"
            );
            return;
        };
        self.with(|record| record.started(pgid, started));
    }

    /// Teardown has killed group `pgid`.
    pub(super) fn ended(&self, pgid: i32) {
        self.with(|record| record.ended(pgid));
    }

    fn with(&self, change: impl FnOnce(&mut RecordFile)) {
        if let Ok(mut record) = self.0.lock()
            && let Some(record) = record.as_mut()
        {
            change(record);
        }
    }
}

/// The open, locked record file and the groups it names.
struct RecordFile {
    dir: PathBuf,
    path: PathBuf,
    /// Holds the lock: closing it (or dying) releases it.
    file: File,
    /// Bytes of whole lines: where the next one goes.
    len: u64,
    live: HashMap<i32, u64>,
    /// `-PGID` lines since the file was last written whole.
    ended: usize,
}

impl RecordFile {
    fn create(dir: &Path) -> io::Result<RecordFile> {
        let (path, file) = new_locked_file(dir)?;
        Ok(RecordFile {
            dir: dir.to_owned(),
            path,
            file,
            len: 0,
            live: HashMap::new(),
            ended: 0,
        })
    }

    fn started(&mut self, pgid: i32, started: u64) {
        if self.append(&format!("{pgid} {started}\n")) {
            self.live.insert(pgid, started);
        }
    }

    fn ended(&mut self, pgid: i32) {
        if self.live.remove(&pgid).is_none() || !self.append(&format!("-{pgid}\n")) {
            return;
        }
        self.ended += 1;
        if self.ended >= REWRITE_AFTER && self.ended > self.live.len() {
            self.rewrite();
        }
    }

    /// Appends one whole line; a write cut short (disk full) is cut off
    /// again, so the next line starts on a line of its own.
    fn append(&mut self, line: &str) -> bool {
        match self.file.write_all_at(line.as_bytes(), self.len) {
            Ok(()) => {
                self.len += line.len() as u64;
                true
            }
            Err(err) => {
                let _ = self.file.set_len(self.len);
                tracing::debug!(path = %self.path.display(), error = %err, "writing the record of stdio process groups failed");
                false
            }
        }
    }

    /// Replaces the record with a new file naming only the live groups,
    /// written and locked before the old one is removed: a crash in between
    /// leaves two records of one dead daemon, and a sweep reads both.
    fn rewrite(&mut self) {
        self.ended = 0;
        let written = new_locked_file(&self.dir).and_then(|(path, file)| {
            let lines: String = self
                .live
                .iter()
                .map(|(pgid, started)| format!("{pgid} {started}\n"))
                .collect();
            match file.write_all_at(lines.as_bytes(), 0) {
                Ok(()) => Ok((path, file, lines.len() as u64)),
                Err(err) => {
                    let _ = std::fs::remove_file(&path);
                    Err(err)
                }
            }
        });
        match written {
            Ok((path, file, len)) => {
                let old = std::mem::replace(&mut self.path, path);
                self.file = file;
                self.len = len;
                if let Err(err) = std::fs::remove_file(&old) {
                    tracing::debug!(path = %old.display(), error = %err, "removing a rewritten record failed");
                }
            }
            Err(err) => {
                tracing::debug!(dir = %self.dir.display(), error = %err, "rewriting the record of stdio process groups failed")
            }
        }
    }
}

impl Drop for RecordFile {
    /// A daemon that tore everything down leaves no record; one with groups
    /// still alive leaves it for the next start to sweep.
    fn drop(&mut self) {
        if self.live.is_empty()
            && let Err(err) = std::fs::remove_file(&self.path)
        {
            tracing::debug!(path = %self.path.display(), error = %err, "removing the record of stdio process groups failed");
        }
    }
}

/// A new record file in `dir`, locked.
fn new_locked_file(dir: &Path) -> io::Result<(PathBuf, File)> {
    for _ in 0..8 {
        let path = dir.join(format!(
            "{PREFIX}{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)?;
        // Until it is locked, a daemon sweeping right now may take the file
        // for a dead daemon's and remove it: then try another name.
        if try_lock(&file)? && file.metadata()?.nlink() > 0 {
            return Ok((path, file));
        }
    }
    Err(io::Error::other(
        "every new record file was taken by a sweeping daemon",
    ))
}

/// An exclusive `flock`, without waiting: `false` when another open file
/// holds it (its owner is alive).
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor this `File` owns; no memory is shared.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// What a start-up sweep found and did.
#[derive(Debug, Default, PartialEq, Eq)]
struct Swept {
    /// Records of dead daemons.
    records: usize,
    /// Groups that still had processes, now SIGKILLed.
    killed: usize,
    /// Groups with nothing left in them.
    gone: usize,
    /// Groups whose id now belongs to another process: left alone.
    recycled: usize,
    /// Groups the signal could not be sent to (another user's, say).
    failed: usize,
}

/// Kills the surviving groups of every record in `dir` whose lock can be
/// taken, then removes those records. Records are read first and their
/// groups killed once each, so a group in two records (a rewrite cut short)
/// is counted once.
fn sweep(dir: &Path) -> io::Result<Swept> {
    let mut swept = Swept::default();
    let mut taken = Vec::new();
    let mut groups = BTreeMap::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_name().to_string_lossy().starts_with(PREFIX) {
            continue;
        }
        let path = entry.path();
        match take_dead_record(&path) {
            Ok(Some((file, content))) => {
                groups.extend(parse(&content));
                taken.push((path, file));
            }
            Ok(None) => {}
            // Another daemon swept it first.
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => {
                tracing::warn!(path = %path.display(), error = %err, "cannot read a record of stdio process groups; what it names is not swept");
            }
        }
    }
    swept.records = taken.len();
    for (pgid, started) in groups {
        match kill_survivors(pgid, started) {
            Fate::Killed => swept.killed += 1,
            Fate::Gone => swept.gone += 1,
            Fate::Recycled => swept.recycled += 1,
            Fate::Failed(err) => {
                swept.failed += 1;
                tracing::warn!(pgid, error = %err, "cannot kill a process group a previous mcpd left");
            }
        }
    }
    for (path, file) in taken {
        if let Err(err) = std::fs::remove_file(&path) {
            tracing::warn!(path = %path.display(), error = %err, "cannot remove a swept record");
        }
        drop(file);
    }
    Ok(swept)
}

/// The record at `path`, locked, if its owner is dead; `None` if it lives
/// (or the record was swept and removed meanwhile).
fn take_dead_record(path: &Path) -> io::Result<Option<(File, String)>> {
    let mut file = OpenOptions::new().read(true).write(true).open(path)?;
    if !try_lock(&file)? || file.metadata()?.nlink() == 0 {
        return Ok(None);
    }
    let mut content = String::new();
    file.read_to_string(&mut content)?;
    Ok(Some((file, content)))
}

/// The groups a record names: added by `PGID STARTTIME`, removed by `-PGID`,
/// in order. A line not whole or not of these forms names nothing; neither
/// does a group id below 2 (`killpg` would read 0 as the caller's own group).
fn parse(content: &str) -> BTreeMap<i32, u64> {
    let mut groups = BTreeMap::new();
    let whole = match content.rfind('\n') {
        Some(end) => &content[..end],
        None => return groups,
    };
    for line in whole.lines() {
        if let Some(pgid) = line.strip_prefix('-') {
            if let Ok(pgid) = pgid.parse::<i32>() {
                groups.remove(&pgid);
            }
            continue;
        }
        let mut fields = line.split(' ');
        let (Some(pgid), Some(started), None) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if let (Ok(pgid @ 2..), Ok(started)) = (pgid.parse::<i32>(), started.parse::<u64>()) {
            groups.insert(pgid, started);
        }
    }
    groups
}

enum Fate {
    Killed,
    Gone,
    Recycled,
    Failed(io::Error),
}

/// SIGKILLs group `pgid` unless its id was handed to another process since
/// it was recorded. Linux gives out no pid still in use as a process group
/// id: while the leader lives its start time decides, and once it is gone
/// whatever is left in the group is what the dead daemon's child spawned.
fn kill_survivors(pgid: i32, started: u64) -> Fate {
    // SAFETY: getpgrp has no preconditions.
    let own = unsafe { libc::getpgrp() };
    if pgid < 2 || pgid == own {
        return Fate::Recycled;
    }
    if start_time(pgid).is_some_and(|now| now != started) {
        return Fate::Recycled;
    }
    // SAFETY: killpg has no memory-safety preconditions.
    if unsafe { libc::killpg(pgid, libc::SIGKILL) } == 0 {
        return Fate::Killed;
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Fate::Gone
    } else {
        Fate::Failed(err)
    }
}

/// When process `pid` started, in clock ticks since boot; `None` if there is
/// no such process (or no /proc).
fn start_time(pid: i32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    start_time_of(&stat)
}

/// Field 22 of a `/proc/PID/stat` line. The command name (field 2) is in
/// parentheses and may hold spaces and parentheses itself: fields are
/// counted from the last `)`, after which field 3 comes.
fn start_time_of(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(22 - 3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_names_the_groups_added_and_not_removed() {
        let groups = parse("100 5\n200 6\n-100\n300 7\n");
        assert_eq!(groups, BTreeMap::from([(200, 6), (300, 7)]));
    }

    #[test]
    fn a_line_cut_short_names_nothing() {
        assert_eq!(parse("100 5\n200"), BTreeMap::from([(100, 5)]));
        assert_eq!(parse("100 5\n-10"), BTreeMap::from([(100, 5)]));
        assert_eq!(parse("100"), BTreeMap::new());
    }

    #[test]
    fn garbage_and_dangerous_group_ids_name_nothing() {
        let groups = parse("0 5\n1 5\n-3 5\n7\nx 5\n8 y\n9 5 5\n\n 10 5\n11 5\n");
        assert_eq!(groups, BTreeMap::from([(11, 5)]));
    }

    #[test]
    fn a_group_recorded_again_takes_its_new_start_time() {
        assert_eq!(parse("100 5\n-100\n100 9\n"), BTreeMap::from([(100, 9)]));
    }

    #[test]
    fn the_start_time_is_field_22_even_after_an_odd_command_name() {
        let stat = "4242 (a) b (c) d) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 100 18446744073709551615";
        assert_eq!(start_time_of(stat), Some(987_654));
        assert_eq!(start_time_of("4242 (sleep) S 1"), None);
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn our_own_start_time_is_read() {
        let pid = i32::try_from(std::process::id()).unwrap();
        let once = start_time(pid).expect("our own /proc entry");
        assert_eq!(start_time(pid), Some(once));
    }
}
