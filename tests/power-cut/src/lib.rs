//! A simulated power cut for SQLite, for the durability tests.
//!
//! SIGKILL keeps the operating system's page cache, so a test that kills a
//! process would pass with `synchronous=OFF`: every write reaches the file
//! whether or not it was ever synced. A power cut loses what was not synced.
//! This VFS, registered as [`VFS_NAME`] over the platform's default one,
//! keeps for every file the bytes each write (or truncate) replaced since
//! that file's last successful sync. [`cut`] turns the power off for the
//! files under one directory (one machine: the server's data directory, or
//! a phone's): every later write, truncate, sync and delete there fails, as
//! nothing more reaches that disk. Once the machine's connections are closed,
//! [`restore`] puts the replaced bytes back, newest first, and cuts each file
//! to its synced length: the files as a disk without its cache holds them
//! when the power returns.
//!
//! What it models: the file contents SQLite wrote and synced. Not modelled:
//! a file's creation or deletion not yet made durable by a directory sync
//! (a deletion counts as durable at once), and torn writes within a sector
//! (SQLite's unix VFS declares powersafe overwrite, which this matches).
//!
//! The shim sits *in front of* the default VFS's own file object: SQLite
//! allocates our file size (the default's plus a trailer), the default VFS
//! opens its file in the front part, and our I/O methods are a copy of its
//! own with write, truncate and sync wrapped. Every other method (reads,
//! locks, shared memory) is the default's, called on its own file.

use std::collections::HashMap;
use std::ffi::{CStr, CString, c_char, c_int, c_void};
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock};

use libsqlite3_sys as ffi;

/// The name to open a database with (`SqliteConnectOptions::vfs`).
pub const VFS_NAME: &str = "doorstep-power-cut";

/// The bytes a write replaced.
#[derive(Debug)]
struct Replaced {
    offset: u64,
    /// As they were before the write, up to the file's end then.
    bytes: Vec<u8>,
}

/// A file's writes since its last sync.
#[derive(Debug, Default)]
struct Unsynced {
    /// Its length at its last sync (or when first written through us).
    synced_len: u64,
    replaced: Vec<Replaced>,
}

#[derive(Debug, Default)]
struct Machines {
    /// Directories whose power is off.
    cut: Vec<PathBuf>,
    files: HashMap<PathBuf, Unsynced>,
    /// Successful syncs per file, so a test can show the syncs happen.
    syncs: HashMap<PathBuf, u64>,
    /// Writes, truncates, syncs and deletes refused per file because its
    /// machine's power was off: a test shows its cuts bite with these (a
    /// cut between two fsynced commits leaves nothing to undo).
    refused: HashMap<PathBuf, u64>,
}

impl Machines {
    fn is_cut(&self, path: &Path) -> bool {
        self.cut.iter().any(|dir| path.starts_with(dir))
    }

    /// Whether `path` is cut off, counting the refusal if it is.
    fn refuses(&mut self, path: &Path) -> bool {
        let cut = self.is_cut(path);
        if cut {
            *self.refused.entry(path.to_path_buf()).or_default() += 1;
        }
        cut
    }
}

fn machines() -> MutexGuard<'static, Machines> {
    static MACHINES: OnceLock<Mutex<Machines>> = OnceLock::new();
    // A panic while holding the lock leaves plain data behind.
    MACHINES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Our trailer, after the default VFS's file object.
#[repr(C)]
struct Trailer {
    /// The default VFS's methods for this file (ours wrap them).
    real: *const ffi::sqlite3_io_methods,
    /// The file's path; null for a temporary file (not tracked).
    path: *mut PathBuf,
}

/// The default VFS, and ours, registered once.
struct Registered {
    real: *mut ffi::sqlite3_vfs,
    trailer_offset: usize,
}

// SAFETY: the pointers are to SQLite's VFS objects, which live for the
// process and are safe to use from any thread (SQLite is built threadsafe).
unsafe impl Send for Registered {}
unsafe impl Sync for Registered {}

static REGISTERED: OnceLock<Result<Registered, String>> = OnceLock::new();

/// Registers the VFS (once per process; not as the default).
pub fn register() -> Result<(), String> {
    REGISTERED
        .get_or_init(register_once)
        .as_ref()
        .map(|_| ())
        .map_err(Clone::clone)
}

fn register_once() -> Result<Registered, String> {
    // SAFETY: sqlite3_vfs_find initialises SQLite and returns the default
    // VFS, which lives for the process.
    let real = unsafe { ffi::sqlite3_vfs_find(std::ptr::null()) };
    if real.is_null() {
        return Err("SQLite has no default VFS".into());
    }
    // SAFETY: `real` is a valid VFS (above).
    let mut ours: ffi::sqlite3_vfs = unsafe { std::ptr::read(real) };
    let real_size = usize::try_from(ours.szOsFile).map_err(|e| e.to_string())?;
    let align = std::mem::align_of::<Trailer>();
    let trailer_offset = real_size.div_ceil(align) * align;
    ours.szOsFile = c_int::try_from(trailer_offset + std::mem::size_of::<Trailer>())
        .map_err(|e| e.to_string())?;
    ours.pNext = std::ptr::null_mut();
    let name = CString::new(VFS_NAME).map_err(|e| e.to_string())?;
    ours.zName = name.into_raw();
    ours.xOpen = Some(x_open);
    ours.xDelete = Some(x_delete);
    // Every other VFS method is the default's: they read nothing of the VFS
    // object but what the copy keeps (its app data, its longest path).
    let ours = Box::into_raw(Box::new(ours));
    // SAFETY: `ours` is a complete VFS object that lives for the process.
    let rc = unsafe { ffi::sqlite3_vfs_register(ours, 0) };
    if rc != ffi::SQLITE_OK {
        return Err(format!("sqlite3_vfs_register failed: {rc}"));
    }
    Ok(Registered {
        real,
        trailer_offset,
    })
}

fn registered() -> &'static Registered {
    match REGISTERED.get() {
        Some(Ok(registered)) => registered,
        // SQLite calls our methods only after a successful registration.
        _ => unreachable!("power-cut VFS used before it was registered"),
    }
}

/// The directory as SQLite names the files in it (symlinks resolved, as
/// SQLite resolves them), so a cut under a symlinked temp dir still bites.
fn machine(dir: &Path) -> PathBuf {
    dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf())
}

/// Turns the power off for every file under `dir`.
pub fn cut(dir: &Path) {
    machines().cut.push(machine(dir));
}

/// Once every connection to the files under `dir` is closed: puts back what
/// the writes since each file's last sync replaced, and turns the power on.
/// Returns how many writes (and truncates) it undid.
pub fn restore(dir: &Path) -> std::io::Result<usize> {
    let dir = &machine(dir);
    let mut undone = 0;
    let mut machines = machines();
    let paths: Vec<PathBuf> = machines
        .files
        .keys()
        .filter(|path| path.starts_with(dir))
        .cloned()
        .collect();
    for path in paths {
        let Some(unsynced) = machines.files.remove(&path) else {
            continue;
        };
        let file = match OpenOptions::new().write(true).open(&path) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        for replaced in unsynced.replaced.iter().rev() {
            file.write_all_at(&replaced.bytes, replaced.offset)?;
        }
        undone += unsynced.replaced.len();
        file.set_len(unsynced.synced_len)?;
        file.sync_all()?;
    }
    machines
        .cut
        .retain(|cut| !cut.starts_with(dir) && !dir.starts_with(cut));
    Ok(undone)
}

/// Operations refused under `dir` so far because its power was off.
pub fn refusals_under(dir: &Path) -> u64 {
    let dir = &machine(dir);
    machines()
        .refused
        .iter()
        .filter(|(path, _)| path.starts_with(dir))
        .map(|(_, n)| n)
        .sum()
}

/// Successful syncs of the files under `dir` so far.
pub fn syncs_under(dir: &Path) -> u64 {
    let dir = &machine(dir);
    machines()
        .syncs
        .iter()
        .filter(|(path, _)| path.starts_with(dir))
        .map(|(_, n)| n)
        .sum()
}

/// The trailer of a file we opened.
///
/// # Safety
/// `file` was opened by [`x_open`].
unsafe fn trailer(file: *mut ffi::sqlite3_file) -> *mut Trailer {
    // SAFETY: our files are szOsFile bytes long, the trailer at its offset.
    unsafe {
        file.cast::<u8>()
            .add(registered().trailer_offset)
            .cast::<Trailer>()
    }
}

/// The tracked path of a file we opened, if it has one.
///
/// # Safety
/// `file` was opened by [`x_open`] and is not closed.
unsafe fn path_of<'a>(file: *mut ffi::sqlite3_file) -> Option<&'a PathBuf> {
    // SAFETY: the path lives until `x_close` frees it.
    unsafe { (*trailer(file)).path.as_ref() }
}

/// The default VFS's methods for a file we opened.
///
/// # Safety
/// `file` was opened by [`x_open`].
unsafe fn real_methods<'a>(file: *mut ffi::sqlite3_file) -> &'a ffi::sqlite3_io_methods {
    // SAFETY: set at open to the default VFS's static methods.
    unsafe { &*(*trailer(file)).real }
}

/// Our methods, one table per table of the default VFS's (it has one per
/// locking style), made once and kept for the process.
fn methods_for(real: *const ffi::sqlite3_io_methods) -> *const ffi::sqlite3_io_methods {
    struct Tables(Vec<(usize, usize)>);
    static TABLES: OnceLock<Mutex<Tables>> = OnceLock::new();
    let mut tables = TABLES
        .get_or_init(|| Mutex::new(Tables(Vec::new())))
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some((_, ours)) = tables.0.iter().find(|(r, _)| *r == real as usize) {
        return *ours as *const ffi::sqlite3_io_methods;
    }
    // SAFETY: `real` is the default VFS's static method table.
    let mut ours: ffi::sqlite3_io_methods = unsafe { std::ptr::read(real) };
    // Version 2: no memory-mapped I/O, whose writes would bypass xWrite.
    ours.iVersion = ours.iVersion.min(2);
    ours.xFetch = None;
    ours.xUnfetch = None;
    ours.xClose = Some(x_close);
    ours.xWrite = Some(x_write);
    ours.xTruncate = Some(x_truncate);
    ours.xSync = Some(x_sync);
    let ours = Box::into_raw(Box::new(ours)) as usize;
    tables.0.push((real as usize, ours));
    ours as *const ffi::sqlite3_io_methods
}

unsafe extern "C" fn x_open(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    file: *mut ffi::sqlite3_file,
    flags: c_int,
    out_flags: *mut c_int,
) -> c_int {
    let real = registered().real;
    // SAFETY: SQLite gave us `file` of our szOsFile bytes; the default VFS
    // opens its own object in the front part of it.
    let rc = unsafe {
        match (*real).xOpen {
            Some(open) => open(real, name, file, flags, out_flags),
            None => ffi::SQLITE_CANTOPEN,
        }
    };
    // SAFETY: on failure the default VFS left pMethods null (SQLite's rule),
    // and then the trailer is never read; on success we own the trailer.
    unsafe {
        if rc != ffi::SQLITE_OK || (*file).pMethods.is_null() {
            return rc;
        }
        let path = if name.is_null() {
            std::ptr::null_mut()
        } else {
            let text = CStr::from_ptr(name).to_string_lossy().into_owned();
            Box::into_raw(Box::new(PathBuf::from(text)))
        };
        std::ptr::write(
            trailer(file),
            Trailer {
                real: (*file).pMethods,
                path,
            },
        );
        (*file).pMethods = methods_for((*file).pMethods);
    }
    rc
}

unsafe extern "C" fn x_delete(
    _vfs: *mut ffi::sqlite3_vfs,
    name: *const c_char,
    sync_dir: c_int,
) -> c_int {
    let path = if name.is_null() {
        None
    } else {
        // SAFETY: SQLite passes a NUL-terminated path.
        Some(PathBuf::from(
            unsafe { CStr::from_ptr(name) }
                .to_string_lossy()
                .into_owned(),
        ))
    };
    if let Some(path) = &path {
        let mut machines = machines();
        if machines.refuses(path) {
            return ffi::SQLITE_IOERR_DELETE;
        }
        machines.files.remove(path);
    }
    let real = registered().real;
    // SAFETY: the default VFS's own delete, with its own VFS object.
    unsafe {
        match (*real).xDelete {
            Some(delete) => delete(real, name, sync_dir),
            None => ffi::SQLITE_IOERR_DELETE,
        }
    }
}

unsafe extern "C" fn x_close(file: *mut ffi::sqlite3_file) -> c_int {
    // SAFETY: `file` is ours and open; after the default's close we free
    // the path and never touch the trailer again.
    unsafe {
        let methods = real_methods(file);
        let path = (*trailer(file)).path;
        (*file).pMethods = (*trailer(file)).real;
        let rc = match methods.xClose {
            Some(close) => close(file),
            None => ffi::SQLITE_OK,
        };
        if !path.is_null() {
            drop(Box::from_raw(path));
            (*trailer(file)).path = std::ptr::null_mut();
        }
        rc
    }
}

/// The file's current size, through the default VFS.
///
/// # Safety
/// `file` is ours and open.
unsafe fn size_of(file: *mut ffi::sqlite3_file) -> Result<u64, c_int> {
    let mut size: ffi::sqlite3_int64 = 0;
    // SAFETY: the default's method on its own object.
    let rc = unsafe {
        match real_methods(file).xFileSize {
            Some(file_size) => file_size(file, &mut size),
            None => ffi::SQLITE_IOERR,
        }
    };
    if rc == ffi::SQLITE_OK {
        u64::try_from(size).map_err(|_| ffi::SQLITE_IOERR)
    } else {
        Err(rc)
    }
}

/// Keeps the bytes in `[offset, offset + len)` that exist now, before a
/// write or truncate replaces them.
///
/// # Safety
/// `file` is ours and open.
unsafe fn keep_replaced(
    file: *mut ffi::sqlite3_file,
    path: &Path,
    offset: u64,
    len: u64,
) -> Result<(), c_int> {
    // SAFETY: our caller's contract.
    let size = unsafe { size_of(file)? };
    let existing = size.saturating_sub(offset).min(len);
    let mut bytes = vec![0u8; usize::try_from(existing).map_err(|_| ffi::SQLITE_NOMEM)?];
    if existing > 0 {
        // SAFETY: reading `existing` bytes into a buffer that long.
        let rc = unsafe {
            match real_methods(file).xRead {
                Some(read) => read(
                    file,
                    bytes.as_mut_ptr().cast::<c_void>(),
                    c_int::try_from(existing).map_err(|_| ffi::SQLITE_NOMEM)?,
                    ffi::sqlite3_int64::try_from(offset).map_err(|_| ffi::SQLITE_IOERR)?,
                ),
                None => ffi::SQLITE_IOERR,
            }
        };
        if rc != ffi::SQLITE_OK {
            return Err(rc);
        }
    }
    let mut machines = machines();
    let unsynced = machines
        .files
        .entry(path.to_path_buf())
        .or_insert_with(|| Unsynced {
            synced_len: size,
            replaced: Vec::new(),
        });
    unsynced.replaced.push(Replaced { offset, bytes });
    Ok(())
}

unsafe extern "C" fn x_write(
    file: *mut ffi::sqlite3_file,
    buf: *const c_void,
    amount: c_int,
    offset: ffi::sqlite3_int64,
) -> c_int {
    // SAFETY: SQLite calls us on a file we opened.
    unsafe {
        if let Some(path) = path_of(file) {
            if machines().refuses(path) {
                return ffi::SQLITE_IOERR_WRITE;
            }
            let (Ok(at), Ok(len)) = (u64::try_from(offset), u64::try_from(amount)) else {
                return ffi::SQLITE_IOERR_WRITE;
            };
            if let Err(rc) = keep_replaced(file, path, at, len) {
                return rc;
            }
        }
        match real_methods(file).xWrite {
            Some(write) => write(file, buf, amount, offset),
            None => ffi::SQLITE_IOERR_WRITE,
        }
    }
}

unsafe extern "C" fn x_truncate(file: *mut ffi::sqlite3_file, size: ffi::sqlite3_int64) -> c_int {
    // SAFETY: SQLite calls us on a file we opened.
    unsafe {
        if let Some(path) = path_of(file) {
            if machines().refuses(path) {
                return ffi::SQLITE_IOERR_TRUNCATE;
            }
            let Ok(at) = u64::try_from(size) else {
                return ffi::SQLITE_IOERR_TRUNCATE;
            };
            if let Err(rc) = keep_replaced(file, path, at, u64::MAX - at) {
                return rc;
            }
        }
        match real_methods(file).xTruncate {
            Some(truncate) => truncate(file, size),
            None => ffi::SQLITE_IOERR_TRUNCATE,
        }
    }
}

unsafe extern "C" fn x_sync(file: *mut ffi::sqlite3_file, flags: c_int) -> c_int {
    // SAFETY: SQLite calls us on a file we opened.
    unsafe {
        let path = path_of(file);
        if path.is_some_and(|path| machines().refuses(path)) {
            return ffi::SQLITE_IOERR_FSYNC;
        }
        let rc = match real_methods(file).xSync {
            Some(sync) => sync(file, flags),
            None => ffi::SQLITE_IOERR_FSYNC,
        };
        if rc != ffi::SQLITE_OK {
            return rc;
        }
        if let Some(path) = path {
            let Ok(size) = size_of(file) else {
                return ffi::SQLITE_IOERR_FSYNC;
            };
            let mut machines = machines();
            // A sync racing the cut: the cut came first, this sync did not
            // happen as far as the disk is concerned.
            if machines.is_cut(path) {
                return ffi::SQLITE_IOERR_FSYNC;
            }
            machines.files.insert(
                path.clone(),
                Unsynced {
                    synced_len: size,
                    replaced: Vec::new(),
                },
            );
            *machines.syncs.entry(path.clone()).or_default() += 1;
        }
        rc
    }
}

#[cfg(test)]
mod tests {
    //! The VFS through plain SQLite: a synced commit survives the cut, an
    //! unsynced one does not.

    use super::*;

    fn exec(db: *mut ffi::sqlite3, sql: &str) -> c_int {
        let sql = CString::new(sql).expect("no NUL");
        // SAFETY: a valid connection and statement text.
        unsafe {
            ffi::sqlite3_exec(
                db,
                sql.as_ptr(),
                None,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
            )
        }
    }

    fn open(path: &Path) -> *mut ffi::sqlite3 {
        register().expect("registered");
        let name = CString::new(path.to_string_lossy().as_bytes()).expect("no NUL");
        let vfs = CString::new(VFS_NAME).expect("no NUL");
        let mut db = std::ptr::null_mut();
        // SAFETY: valid out pointer and NUL-terminated strings.
        let rc = unsafe {
            ffi::sqlite3_open_v2(
                name.as_ptr(),
                &mut db,
                ffi::SQLITE_OPEN_READWRITE | ffi::SQLITE_OPEN_CREATE,
                vfs.as_ptr(),
            )
        };
        assert_eq!(rc, ffi::SQLITE_OK);
        db
    }

    fn count(db: *mut ffi::sqlite3) -> i64 {
        let sql = CString::new("select count(*) from t").expect("no NUL");
        let mut stmt = std::ptr::null_mut();
        // SAFETY: a valid connection; the statement is finalized.
        unsafe {
            assert_eq!(
                ffi::sqlite3_prepare_v2(db, sql.as_ptr(), -1, &mut stmt, std::ptr::null_mut()),
                ffi::SQLITE_OK
            );
            assert_eq!(ffi::sqlite3_step(stmt), ffi::SQLITE_ROW);
            let n = ffi::sqlite3_column_int64(stmt, 0);
            ffi::sqlite3_finalize(stmt);
            n
        }
    }

    fn close(db: *mut ffi::sqlite3) {
        // SAFETY: a valid connection, closed once.
        unsafe { ffi::sqlite3_close(db) };
    }

    fn run(synchronous: &str) -> i64 {
        let dir = std::env::temp_dir().join(format!(
            "power-cut-{}-{synchronous}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let db = open(&dir.join("t.db"));
        assert_eq!(exec(db, "pragma journal_mode = wal"), ffi::SQLITE_OK);
        assert_eq!(
            exec(db, &format!("pragma synchronous = {synchronous}")),
            ffi::SQLITE_OK
        );
        assert_eq!(exec(db, "create table t (x)"), ffi::SQLITE_OK);
        for i in 0..10 {
            assert_eq!(
                exec(db, &format!("insert into t values ({i})")),
                ffi::SQLITE_OK
            );
        }
        cut(&dir);
        // The power is off: the next commit fails.
        assert_ne!(exec(db, "insert into t values (10)"), ffi::SQLITE_OK);
        close(db);
        restore(&dir).expect("restore");
        let db = open(&dir.join("t.db"));
        let n = if exec(db, "select 1 from t") == ffi::SQLITE_OK {
            count(db)
        } else {
            -1
        };
        close(db);
        let _ = std::fs::remove_dir_all(&dir);
        n
    }

    #[test]
    fn synced_commits_survive_the_cut_and_unsynced_ones_do_not() {
        assert_eq!(run("full"), 10, "synchronous=FULL keeps every commit");
        assert_ne!(run("off"), 10, "synchronous=OFF must lose commits here");
    }
}
