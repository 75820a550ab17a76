//! The lock of a directory diffnas writes: a run (`train`), a search, a block search, a
//! proxy study or one trial. An exclusive `flock` on [`LOCK_FILE`] held for as long as the
//! [`DirLock`] lives; the OS releases it when the process ends however it ends (a SIGKILL
//! leaves no stale lock), and the file names the holder for the error a second process gets.
//! Read-only commands (`sample`, `eval`, `report`, `export`) take no lock.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

/// The lock file of a directory (its content names the holder: `pid N on HOST`).
pub const LOCK_FILE: &str = "job.lock";

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds the directory.
    #[error(
        "{} is in use by another diffnas process ({holder}); wait for it to end or stop it, \
         then try again",
        dir.display()
    )]
    Held { dir: PathBuf, holder: String },
    #[error("{}: {message}", path.display())]
    Io { path: PathBuf, message: String },
}

impl LockError {
    /// A held lock is the user's to resolve; an I/O failure is not.
    pub fn is_bad_input(&self) -> bool {
        matches!(self, LockError::Held { .. })
    }
}

/// An exclusive lock on a directory, released on drop or when the process dies.
#[derive(Debug)]
pub struct DirLock {
    _file: std::fs::File,
}

impl DirLock {
    /// The lock of `dir` (created if missing), or None when another process holds it.
    pub fn try_take(dir: &Path) -> Result<Option<DirLock>, LockError> {
        let io = |path: &Path, e: std::io::Error| LockError::Io {
            path: path.to_path_buf(),
            message: e.to_string(),
        };
        std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
        let p = dir.join(LOCK_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&p)
            .map_err(|e| io(&p, e))?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = std::io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EWOULDBLOCK) => Ok(None),
                _ => Err(io(&p, e)),
            };
        }
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
        let _ = f.set_len(0);
        let _ = writeln!(f, "pid {} on {}", std::process::id(), host.trim());
        Ok(Some(DirLock { _file: f }))
    }

    /// The lock of `dir`; held by another process, an error naming it.
    pub fn take(dir: &Path) -> Result<DirLock, LockError> {
        DirLock::try_take(dir)?.ok_or_else(|| LockError::Held {
            dir: dir.to_path_buf(),
            holder: holder(dir).unwrap_or_else(|| "a process that did not say which".into()),
        })
    }
}

/// Who holds (or last held) the lock of `dir`, as its file says.
pub fn holder(dir: &Path) -> Option<String> {
    let text = std::fs::read_to_string(dir.join(LOCK_FILE)).ok()?;
    let line = text.lines().next()?.trim();
    (!line.is_empty()).then(|| line.to_string())
}

/// Whether a process holds the lock of `dir` now.
pub fn is_held(dir: &Path) -> bool {
    dir.join(LOCK_FILE).is_file() && matches!(DirLock::try_take(dir), Ok(None))
}
