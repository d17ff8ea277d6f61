//! One server per data directory. SQLite's own locks let two processes
//! share a database file, so a second `doorstep serve` on the same
//! directory would start and serve beside the first: two hubs, each
//! believing it holds every live document, each compacting and projecting
//! on its own. `serve` therefore takes an exclusive lock on a file in the
//! directory for its whole life and writes its process id there, so the
//! refusal can name who holds it. The operating system drops the lock when
//! the process ends, however it ends, so a killed server never leaves the
//! directory locked. The admin commands take no lock: they work beside a
//! running server, as SQLite allows; `restore` takes one of its own (one
//! restore at a time, so its staging copy has one name, and a copy a
//! killed restore left behind, names and all, is removed by the next).

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// What a hold on the data directory is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hold {
    /// `doorstep serve`, for its whole life.
    Serve,
    /// `doorstep restore`, while it runs.
    Restore,
}

impl Hold {
    /// The lock file's name inside the data directory.
    fn file(self) -> &'static str {
        match self {
            Hold::Serve => LOCK_FILE,
            Hold::Restore => "restore.lock",
        }
    }
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Hold::Serve => "another doorstep server",
            Hold::Restore => "another doorstep restore",
        })
    }
}

/// The server's lock file's name inside the data directory.
const LOCK_FILE: &str = "serve.lock";

/// Why the data directory could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error(
        "{hold} ({holder}) is using the data directory {dir}: wait for it or stop it, or name another --data-dir"
    )]
    InUse {
        hold: Hold,
        dir: PathBuf,
        holder: String,
    },
    /// Words an operator acts on: a read-only folder and a full disk are
    /// the usual causes (the database would fail the same way next).
    #[error(
        "the data directory {dir} cannot be written ({source}): check its permissions and free space"
    )]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The exclusive hold on a data directory, for as long as it lives.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
}

impl DataDirLock {
    /// Takes `dir` (creating it if needed) for this process's `hold`, or
    /// says which process holds it.
    pub fn acquire(dir: &Path, hold: Hold) -> Result<DataDirLock, DataDirError> {
        let io = |source| DataDirError::Io {
            dir: dir.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        // The file is truncated below: never through a link to something
        // else (a stray `serve.lock -> doorstep.db` would empty the
        // database).
        let path = dir.join(hold.file());
        if let Ok(meta) = std::fs::symlink_metadata(&path) {
            use std::os::unix::fs::MetadataExt;
            if !meta.is_file() || meta.nlink() != 1 {
                return Err(io(std::io::Error::other(format!(
                    "{} is not a plain file of its own; remove it",
                    path.display()
                ))));
            }
        }
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)
            .map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(DataDirError::InUse {
                    hold,
                    dir: dir.to_path_buf(),
                    holder: holder(&mut file),
                });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(io(e)),
        }
        // Who holds it, for the next one to be told; a failure here costs
        // only that line of the refusal.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| write!(file, "{}", std::process::id()))
            .and_then(|()| file.sync_all());
        Ok(DataDirLock { _file: file })
    }
}

/// The holder as its lock file names it.
fn holder(file: &mut File) -> String {
    let mut text = String::new();
    // At most a process id; a longer or garbled file is not ours to quote.
    let read = Read::by_ref(file).take(32).read_to_string(&mut text);
    match text.trim().parse::<u32>() {
        Ok(pid) if read.is_ok() => format!("process {pid}"),
        _ => "a process that did not say which".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_hold_is_refused_naming_the_first_and_free_once_it_ends() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let data = dir.path().join("data");
        for hold in [Hold::Serve, Hold::Restore] {
            let first = DataDirLock::acquire(&data, hold).expect("the first hold");
            match DataDirLock::acquire(&data, hold) {
                Err(DataDirError::InUse {
                    hold: held,
                    dir,
                    holder,
                }) => {
                    assert_eq!(held, hold);
                    assert_eq!(dir, data);
                    assert_eq!(holder, format!("process {}", std::process::id()));
                }
                other => panic!("a second hold: {other:?}"),
            }
            drop(first);
            DataDirLock::acquire(&data, hold).expect("free again once the first ended");
        }
        // A restore runs beside a server: the two holds are apart.
        let _serving = DataDirLock::acquire(&data, Hold::Serve).expect("serve");
        let _restoring = DataDirLock::acquire(&data, Hold::Restore).expect("restore");
    }

    #[test]
    fn a_lock_file_that_links_elsewhere_is_refused_and_its_target_left_whole() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let target = dir.path().join("doorstep.db");
        std::fs::write(&target, b"the database").expect("a target");
        std::os::unix::fs::symlink(&target, dir.path().join(LOCK_FILE)).expect("a symlink");
        assert!(matches!(
            DataDirLock::acquire(dir.path(), Hold::Serve),
            Err(DataDirError::Io { .. })
        ));
        std::fs::remove_file(dir.path().join(LOCK_FILE)).expect("unlink");
        std::fs::hard_link(&target, dir.path().join(LOCK_FILE)).expect("a hard link");
        assert!(DataDirLock::acquire(dir.path(), Hold::Serve).is_err());
        assert_eq!(std::fs::read(&target).expect("read"), b"the database");
    }

    #[test]
    fn a_garbled_lock_file_is_not_quoted() {
        let dir = tempfile::tempdir().expect("a temp dir");
        std::fs::write(dir.path().join(LOCK_FILE), "x".repeat(1000)).expect("garbage");
        let mut file = File::open(dir.path().join(LOCK_FILE)).expect("open");
        assert_eq!(holder(&mut file), "a process that did not say which");
    }
}
