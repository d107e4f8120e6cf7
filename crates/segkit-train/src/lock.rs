//! One writer per run directory: `train.lock` holds the pid of the process training into it.
//!
//! A second `segkit train --resume` on a directory that a live process is writing would
//! interleave two runs' checkpoints and metrics; it gets an error naming the owner instead. A
//! lock left by a process that no longer exists (killed with SIGKILL, a reboot) is taken over,
//! and the caller is told so. The lock is removed when the guard is dropped.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::TrainError;

pub const FILE: &str = "train.lock";

/// Held while a run writes into its directory.
#[derive(Debug)]
pub struct RunLock {
    path: PathBuf,
}

impl Drop for RunLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Whether a process with this pid exists. Only Linux can tell (through /proc); elsewhere every
/// pid counts as alive, so a stale lock there is removed by hand (the error says how).
pub fn alive(pid: u32) -> bool {
    let proc = Path::new("/proc");
    if !proc.join("self").exists() {
        return true;
    }
    proc.join(pid.to_string()).exists()
}

/// Takes the lock of `dir`. `Ok((lock, Some(pid)))` when a stale lock of process `pid` was taken
/// over; an error when a live process holds it.
pub fn acquire(dir: &Path) -> Result<(RunLock, Option<u32>), TrainError> {
    let path = dir.join(FILE);
    let mut taken_over = None;
    for _ in 0..2 {
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                writeln!(f, "{}", std::process::id()).map_err(|e| TrainError::io(&path, e))?;
                return Ok((RunLock { path }, taken_over));
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                let text = std::fs::read_to_string(&path).unwrap_or_default();
                match text.trim().parse::<u32>() {
                    Ok(pid) if pid != std::process::id() && alive(pid) => {
                        return Err(TrainError::checkpoint(
                            &path,
                            format!(
                                "another segkit process (pid {pid}) is training into {}; wait for it, stop it, \
                                 or if it is gone, delete this file",
                                dir.display()
                            ),
                        ));
                    }
                    // Our own pid (a lock left by an earlier run in this process), a dead
                    // process, or an unreadable file: stale.
                    pid => {
                        taken_over = Some(pid.unwrap_or(0));
                        std::fs::remove_file(&path).map_err(|e| TrainError::io(&path, e))?;
                    }
                }
            }
            Err(e) => return Err(TrainError::io(&path, e)),
        }
    }
    Err(TrainError::Config(format!(
        "{}: could not take the run directory's lock (another process keeps taking it)",
        path.display()
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("segkit-lock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// A live owner's lock is refused with its pid; the file is gone once the guard drops.
    #[test]
    fn a_live_owner_keeps_the_directory() {
        let d = dir("live");
        // A live process that is not this one: a child that waits.
        let mut child = std::process::Command::new("sleep").arg("30").spawn().expect("sleep");
        std::fs::write(d.join(FILE), format!("{}\n", child.id())).unwrap();
        let err = acquire(&d).unwrap_err().to_string();
        assert!(err.contains(&format!("pid {}", child.id())) && err.contains("train.lock"), "{err}");
        child.kill().unwrap();
        child.wait().unwrap();
        // Now the owner is dead: its lock is taken over, and saying whose.
        let (lock, stale) = acquire(&d).unwrap();
        assert_eq!(stale, Some(child.id()));
        assert_eq!(std::fs::read_to_string(d.join(FILE)).unwrap().trim(), std::process::id().to_string());
        drop(lock);
        assert!(!d.join(FILE).exists());
        let (_lock, stale) = acquire(&d).unwrap();
        assert_eq!(stale, None);
    }
}
