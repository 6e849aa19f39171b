//! The pid file: which process is the running instance, for `--reload`.
//!
//! Pingora writes `[server] pid_file` only when it daemonizes. A process in
//! the foreground (under systemd, in a container) claims the file itself at
//! start ([`PidFile::claim`]), so `sse-fanout -c FILE --reload` finds it
//! either way. A successor started with `--upgrade` claims it in turn; a
//! process that stops removes the file only while it still names itself, so
//! it never removes its successor's, and a stale file never points a
//! `--reload` at whatever process reuses the id (the signal is sent only to
//! a live process, and a dead one's file is gone).

use std::fmt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// The pid file this process wrote, removed when it stops.
pub struct PidFile {
    path: PathBuf,
}

impl PidFile {
    /// Writes this process's id to `path`. A file that cannot be written is
    /// logged, not fatal: only `--reload` needs it (`kill -HUP` works anyway).
    pub fn claim(path: &Path) -> Option<PidFile> {
        match std::fs::write(path, format!("{}\n", std::process::id())) {
            Ok(()) => Some(PidFile {
                path: path.to_path_buf(),
            }),
            Err(e) => {
                log::warn!(
                    "cannot write pid_file {}: {e}; `--reload` will not find this process \
                     (send SIGHUP to it instead)",
                    path.display()
                );
                None
            }
        }
    }

    /// Removes the file, if it still names this process.
    pub fn release(self) {
        let ours = std::fs::read_to_string(&self.path)
            .is_ok_and(|text| text.trim() == std::process::id().to_string());
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Why a running instance could not be asked to reload.
#[derive(Debug)]
pub enum SignalError {
    /// The pid file cannot be read: most often, nothing is running.
    NoPidFile(PathBuf, std::io::Error),
    /// The pid file does not hold a process id.
    BadPidFile(PathBuf),
    /// No process has that id: the pid file is stale.
    NotRunning(PathBuf, i32),
    /// The signal was refused (another user's process).
    Refused(i32, Errno),
}

impl fmt::Display for SignalError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignalError::NoPidFile(path, e) => write!(
                f,
                "cannot read pid_file {}: {e}; is sse-fanout running with this config?",
                path.display()
            ),
            SignalError::BadPidFile(path) => {
                write!(f, "pid_file {} does not hold a process id", path.display())
            }
            SignalError::NotRunning(path, pid) => write!(
                f,
                "no process {pid} (from pid_file {}): sse-fanout is not running",
                path.display()
            ),
            SignalError::Refused(pid, e) => write!(f, "cannot signal process {pid}: {e}"),
        }
    }
}

impl std::error::Error for SignalError {}

/// Sends `SIGHUP` to the process whose id `pid_file` holds, and returns
/// that id.
pub fn signal_running(pid_file: &Path) -> Result<i32, SignalError> {
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| SignalError::NoPidFile(pid_file.to_path_buf(), e))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|&pid| pid > 0)
        .ok_or_else(|| SignalError::BadPidFile(pid_file.to_path_buf()))?;
    match kill(Pid::from_raw(pid), Signal::SIGHUP) {
        Ok(()) => Ok(pid),
        Err(Errno::ESRCH) => Err(SignalError::NotRunning(pid_file.to_path_buf(), pid)),
        Err(e) => Err(SignalError::Refused(pid, e)),
    }
}
