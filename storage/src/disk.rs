//! `Disk`: the small file-I/O surface the durable parts of tally are written
//! against (the command log's segments, blobs, and in tests the whole store),
//! so that tests can run them on a simulated disk that loses what was not
//! synced.
//!
//! A `Disk` is one flat directory of files by name. Contract:
//! - `append`/`write_at` change a file's content at once for readers, but
//!   the change is durable only after `sync` of that file returned `Ok`.
//! - `create`, `remove` and `rename` change the directory at once for
//!   readers, but are durable only after `sync_dir` returned `Ok`.
//! - A failed `sync` or `sync_dir` leaves durability unknown: callers must
//!   not retry it and assume success (the kernel may have dropped the dirty
//!   pages; PostgreSQL's "fsyncgate"). The engine stops taking writes.
//!
//! [`OsDisk`] maps this onto a real directory: `sync` is `fdatasync`
//! (`File::sync_data`) and `sync_dir` is `fsync` of the directory.
//! [`SimDisk`] keeps files in memory with their durable and volatile
//! content apart, counts every mutating step, can fail at a chosen step,
//! and at [`SimDisk::crash`] keeps only what was synced — plus, chosen by a
//! seed, some unsynced writes whole, torn at a sector, or dropped.

use crate::StorageError;
use parking_lot::Mutex;
use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One flat directory of files. See the module docs for the contract.
pub trait Disk: Send + Sync + 'static {
    /// Names of the files, sorted.
    fn list(&self) -> Result<Vec<String>, StorageError>;
    /// The whole content of a file, or `None` when it does not exist.
    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError>;
    /// `len` bytes from `offset`, or `None` when the file does not exist; a
    /// file that ends before `offset + len` is an error. Readers of large
    /// files (the idempotency index's runs) read a page, not the file.
    fn read_at(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        let Some(bytes) = self.read(name)? else {
            return Ok(None);
        };
        slice_at(name, &bytes, offset, len).map(Some)
    }
    /// Creates an empty file (replacing one of that name).
    fn create(&self, name: &str) -> Result<(), StorageError>;
    /// Writes `bytes` at the end of an existing file.
    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError>;
    /// Cuts a file to `len` bytes.
    fn truncate(&self, name: &str, len: u64) -> Result<(), StorageError>;
    /// Makes the file's content durable (`fdatasync`).
    fn sync(&self, name: &str) -> Result<(), StorageError>;
    fn remove(&self, name: &str) -> Result<(), StorageError>;
    fn rename(&self, from: &str, to: &str) -> Result<(), StorageError>;
    /// Makes creations, removals and renames durable (`fsync` of the
    /// directory).
    fn sync_dir(&self) -> Result<(), StorageError>;
    /// Bytes of all files.
    fn size(&self) -> Result<u64, StorageError>;
    /// A directory inside this one (created when missing).
    fn subdir(&self, name: &str) -> Result<Arc<dyn Disk>, StorageError>;
}

/// `len` bytes of `bytes` from `offset`, or a read error naming the file.
pub(crate) fn slice_at(
    name: &str,
    bytes: &[u8],
    offset: u64,
    len: usize,
) -> Result<Vec<u8>, StorageError> {
    usize::try_from(offset)
        .ok()
        .and_then(|start| bytes.get(start..start.checked_add(len)?))
        .map(<[u8]>::to_vec)
        .ok_or_else(|| {
            StorageError::Read(format!(
                "{name}: {len} bytes at {offset} asked of a file of {}",
                bytes.len()
            ))
        })
}

/// Names are short, plain and cannot leave the directory.
pub(crate) fn check_name(name: &str) -> Result<(), StorageError> {
    let plain = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if name.is_empty() || name.len() > 128 || !plain || name.starts_with('.') {
        return Err(StorageError::Write(format!(
            "file name {name:?}: 1-128 of [A-Za-z0-9_.-] expected, not starting with '.'"
        )));
    }
    Ok(())
}

/// A real directory.
#[derive(Debug)]
pub struct OsDisk {
    dir: PathBuf,
    /// Open handles of files being appended to (the log's segments), so an
    /// append and a sync cost no `open`.
    handles: Mutex<BTreeMap<String, File>>,
    /// Read-only handles of files read by range (the index's runs, read a
    /// page at a time by the sequencer): a read costs one `pread`.
    readers: Mutex<BTreeMap<String, Arc<File>>>,
}

impl OsDisk {
    /// Opens `dir`, creating it (and its parents) when missing; a created
    /// directory is made durable in its parent.
    pub fn open(dir: &Path) -> Result<OsDisk, StorageError> {
        let open_err = |reason: String| StorageError::Open {
            path: dir.to_path_buf(),
            reason,
        };
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(|e| open_err(format!("cannot create: {e}")))?;
            if let Some(parent) = dir.parent() {
                File::open(parent)
                    .and_then(|f| f.sync_all())
                    .map_err(|e| open_err(format!("cannot sync the parent directory: {e}")))?;
            }
        }
        if !dir.is_dir() {
            return Err(open_err("not a directory".into()));
        }
        Ok(OsDisk {
            dir: dir.to_path_buf(),
            handles: Mutex::new(BTreeMap::new()),
            readers: Mutex::new(BTreeMap::new()),
        })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> Result<PathBuf, StorageError> {
        check_name(name)?;
        Ok(self.dir.join(name))
    }

    /// Runs `f` on the file's open handle; opens one when there is none,
    /// kept for later calls when `keep` (files appended to again and again:
    /// the log's segments).
    fn with_handle<T>(
        &self,
        name: &str,
        keep: bool,
        f: impl FnOnce(&mut File) -> std::io::Result<T>,
    ) -> Result<T, StorageError> {
        let path = self.path_of(name)?;
        let mut handles = self.handles.lock();
        if let Some(file) = handles.get_mut(name) {
            return f(file).map_err(|e| io_error(&path, e, false));
        }
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|e| io_error(&path, e, false))?;
        let result = f(&mut file).map_err(|e| io_error(&path, e, false));
        if keep {
            handles.insert(name.to_string(), file);
        }
        result
    }
}

fn io_error(path: &Path, e: std::io::Error, flush: bool) -> StorageError {
    match e.raw_os_error() {
        Some(28) => StorageError::NoSpace,
        _ if flush => StorageError::Flush(format!("{}: {e}", path.display())),
        _ => StorageError::Write(format!("{}: {e}", path.display())),
    }
}

impl Disk for OsDisk {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let read = |e: std::io::Error| StorageError::Read(format!("{}: {e}", self.dir.display()));
        let mut names = Vec::new();
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            let entry = entry.map_err(read)?;
            if entry.file_type().map_err(read)?.is_file() {
                if let Some(name) = entry.file_name().to_str() {
                    names.push(name.to_string());
                }
            }
        }
        names.sort();
        Ok(names)
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        let path = self
            .path_of(name)
            .map_err(|e| StorageError::Read(e.to_string()))?;
        let mut bytes = Vec::new();
        match File::open(&path).and_then(|mut f| f.read_to_end(&mut bytes)) {
            Ok(_) => Ok(Some(bytes)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(StorageError::Read(format!("{}: {e}", path.display()))),
        }
    }

    fn read_at(
        &self,
        name: &str,
        offset: u64,
        len: usize,
    ) -> Result<Option<Vec<u8>>, StorageError> {
        use std::os::unix::fs::FileExt;
        let path = self
            .path_of(name)
            .map_err(|e| StorageError::Read(e.to_string()))?;
        let cached = self.readers.lock().get(name).cloned();
        let file = match cached {
            Some(file) => file,
            None => match File::open(&path) {
                Ok(file) => {
                    let file = Arc::new(file);
                    self.readers.lock().insert(name.to_string(), file.clone());
                    file
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(StorageError::Read(format!("{}: {e}", path.display()))),
            },
        };
        let mut bytes = vec![0u8; len];
        file.read_exact_at(&mut bytes, offset).map_err(|e| {
            StorageError::Read(format!("{}: {len} bytes at {offset}: {e}", path.display()))
        })?;
        Ok(Some(bytes))
    }

    fn create(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path_of(name)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .map_err(|e| io_error(&path, e, false))?;
        self.handles.lock().insert(name.to_string(), file);
        self.readers.lock().remove(name);
        Ok(())
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        self.with_handle(name, true, |f| {
            f.seek(SeekFrom::End(0))?;
            f.write_all(bytes)
        })
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StorageError> {
        self.with_handle(name, false, |f| f.set_len(len))
    }

    fn sync(&self, name: &str) -> Result<(), StorageError> {
        self.with_handle(name, false, |f| f.sync_data())
            .map_err(|e| match e {
                StorageError::Write(reason) => StorageError::Flush(reason),
                other => other,
            })
    }

    fn remove(&self, name: &str) -> Result<(), StorageError> {
        let path = self.path_of(name)?;
        self.handles.lock().remove(name);
        self.readers.lock().remove(name);
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error(&path, e, false)),
        }
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        let (from_path, to_path) = (self.path_of(from)?, self.path_of(to)?);
        let mut handles = self.handles.lock();
        handles.remove(from);
        handles.remove(to);
        let mut readers = self.readers.lock();
        readers.remove(from);
        readers.remove(to);
        std::fs::rename(&from_path, &to_path).map_err(|e| io_error(&from_path, e, false))
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        File::open(&self.dir)
            .and_then(|f| f.sync_all())
            .map_err(|e| io_error(&self.dir, e, true))
    }

    fn subdir(&self, name: &str) -> Result<Arc<dyn Disk>, StorageError> {
        check_name(name)?;
        Ok(Arc::new(OsDisk::open(&self.dir.join(name))?))
    }

    fn size(&self) -> Result<u64, StorageError> {
        let read = |e: std::io::Error| StorageError::Read(format!("{}: {e}", self.dir.display()));
        let mut total = 0;
        for entry in std::fs::read_dir(&self.dir).map_err(read)? {
            total += entry.and_then(|e| e.metadata()).map_err(read)?.len();
        }
        Ok(total)
    }
}

/// Sector size of the simulated disk: a torn write keeps a whole number of
/// sectors of what it wrote.
pub const SIM_SECTOR: usize = 512;

/// What happens to unsynced writes at a simulated crash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrashMode {
    /// Every unsynced write and directory change is lost.
    DropUnsynced,
    /// Each unsynced write is, by the seed, kept, torn at a sector boundary
    /// (a prefix kept) or lost; unsynced directory changes are kept in a
    /// prefix of their order.
    Tear { seed: u64 },
}

#[derive(Clone, Debug, Default)]
struct SimFile {
    /// What a reader sees now.
    content: Vec<u8>,
    /// What survives a crash.
    durable: Vec<u8>,
    /// Unsynced changes in order: `(offset, bytes, false)` writes, or
    /// `(new length, [], true)` truncations.
    unsynced: Vec<(u64, Vec<u8>, bool)>,
}

#[derive(Clone, Debug)]
enum DirOp {
    Link(String, u64),
    Unlink(String),
    /// Atomic: the new name and the removal of the old survive together.
    Rename(String, String, u64),
}

#[derive(Debug, Default)]
struct World {
    /// Every file content ever created, by inode number.
    inodes: BTreeMap<u64, SimFile>,
    next_inode: u64,
    /// The directories as readers see them: full name → inode.
    names: BTreeMap<String, u64>,
    /// The directories as they survive a crash.
    durable_names: BTreeMap<String, u64>,
    /// Unsynced directory changes, with the directory they belong to.
    dir_ops: Vec<(String, DirOp)>,
    /// Mutating steps so far.
    steps: u64,
    /// Fail (and from then on refuse) every mutating step from this one.
    fail_at: Option<u64>,
    failed: bool,
}

/// A simulated disk in memory: one world shared by every directory made
/// from it with [`SimDisk::dir`]. See the module docs.
#[derive(Clone, Debug)]
pub struct SimDisk {
    world: Arc<Mutex<World>>,
    prefix: String,
}

impl Default for SimDisk {
    fn default() -> Self {
        SimDisk::new()
    }
}

impl SimDisk {
    pub fn new() -> SimDisk {
        SimDisk {
            world: Arc::new(Mutex::new(World::default())),
            prefix: String::new(),
        }
    }

    /// A directory of the same disk (shares steps, faults and crashes).
    pub fn dir(&self, name: &str) -> SimDisk {
        SimDisk {
            world: self.world.clone(),
            prefix: format!("{}{name}/", self.prefix),
        }
    }

    /// Mutating steps taken so far on the whole disk.
    pub fn steps(&self) -> u64 {
        self.world.lock().steps
    }

    /// Makes the mutating step number `step` (counted from 0 over the whole
    /// disk) and every later one fail, as a power cut at that step would.
    /// A failing write is recorded as an unsynced change (it may have
    /// reached the disk, whole or torn).
    pub fn fail_at(&self, step: u64) {
        self.world.lock().fail_at = Some(step);
    }

    /// The disk after a power cut: only what was synced, plus what `mode`
    /// keeps of the rest. The new disk has no faults and counts steps from
    /// zero; this one is left as it was.
    pub fn crash(&self, mode: CrashMode) -> SimDisk {
        let world = self.world.lock();
        let mut rng = mode_rng(mode);
        let mut names = world.durable_names.clone();
        let keep_ops = match mode {
            CrashMode::DropUnsynced => 0,
            CrashMode::Tear { .. } => rng.below(world.dir_ops.len() as u64 + 1) as usize,
        };
        for (_, op) in world.dir_ops.iter().take(keep_ops) {
            apply_dir_op(&mut names, op);
        }
        let mut inodes = BTreeMap::new();
        for inode in names.values() {
            let Some(file) = world.inodes.get(inode) else {
                continue;
            };
            let mut content = file.durable.clone();
            if let CrashMode::Tear { .. } = mode {
                for (offset, bytes, truncation) in &file.unsynced {
                    let kept = match rng.below(3) {
                        0 => continue,
                        1 => bytes.len(),
                        _ => {
                            let sectors = bytes.len().div_ceil(SIM_SECTOR) as u64;
                            (rng.below(sectors + 1) as usize * SIM_SECTOR).min(bytes.len())
                        }
                    };
                    apply_write(&mut content, *offset, &bytes[..kept], *truncation);
                }
            }
            inodes.insert(
                *inode,
                SimFile {
                    content: content.clone(),
                    durable: content,
                    unsynced: Vec::new(),
                },
            );
        }
        SimDisk {
            world: Arc::new(Mutex::new(World {
                inodes,
                next_inode: world.next_inode,
                durable_names: names.clone(),
                names,
                ..World::default()
            })),
            prefix: self.prefix.clone(),
        }
    }

    /// Flips one bit of a file's content, durable too (damage at rest).
    /// Returns false when the file or offset does not exist.
    pub fn flip_bit(&self, name: &str, offset: usize, bit: u8) -> bool {
        let full = self.full(name);
        let mut world = self.world.lock();
        let Some(inode) = world.names.get(&full).copied() else {
            return false;
        };
        let Some(file) = world.inodes.get_mut(&inode) else {
            return false;
        };
        if offset >= file.content.len() || offset >= file.durable.len() {
            return false;
        }
        file.content[offset] ^= 1 << (bit % 8);
        file.durable[offset] ^= 1 << (bit % 8);
        true
    }

    fn full(&self, name: &str) -> String {
        format!("{}{name}", self.prefix)
    }

    /// Counts a mutating step; fails it (and every later one) at the fault.
    fn step(&self, world: &mut World, what: &str, name: &str) -> Result<(), StorageError> {
        let step = world.steps;
        world.steps += 1;
        if world.failed || world.fail_at.is_some_and(|at| step >= at) {
            world.failed = true;
            return Err(StorageError::Write(format!(
                "simulated power cut at step {step} ({what} {}{name})",
                self.prefix
            )));
        }
        Ok(())
    }

    /// The file's inode, or a write error naming it.
    fn inode(&self, world: &World, name: &str) -> Result<u64, StorageError> {
        world
            .names
            .get(&self.full(name))
            .copied()
            .ok_or_else(|| StorageError::Write(format!("{}: no such file", self.full(name))))
    }
}

fn apply_dir_op(names: &mut BTreeMap<String, u64>, op: &DirOp) {
    match op {
        DirOp::Link(name, inode) => {
            names.insert(name.clone(), *inode);
        }
        DirOp::Unlink(name) => {
            names.remove(name);
        }
        DirOp::Rename(from, to, inode) => {
            names.remove(from);
            names.insert(to.clone(), *inode);
        }
    }
}

fn apply_write(content: &mut Vec<u8>, offset: u64, bytes: &[u8], truncation: bool) {
    let offset = offset as usize;
    if truncation {
        content.resize(offset, 0);
        return;
    }
    if content.len() < offset + bytes.len() {
        content.resize(offset + bytes.len(), 0);
    }
    content[offset..offset + bytes.len()].copy_from_slice(bytes);
}

/// A tiny deterministic generator (splitmix64) for crash choices.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        if n == 0 {
            0
        } else {
            z % n
        }
    }
}

fn mode_rng(mode: CrashMode) -> Rng {
    match mode {
        CrashMode::DropUnsynced => Rng(0),
        CrashMode::Tear { seed } => Rng(seed),
    }
}

impl Disk for SimDisk {
    fn list(&self) -> Result<Vec<String>, StorageError> {
        let world = self.world.lock();
        Ok(world
            .names
            .keys()
            .filter_map(|k| k.strip_prefix(self.prefix.as_str()))
            .filter(|rest| !rest.contains('/'))
            .map(str::to_string)
            .collect())
    }

    fn read(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        check_name(name).map_err(|e| StorageError::Read(e.to_string()))?;
        let world = self.world.lock();
        Ok(world
            .names
            .get(&self.full(name))
            .and_then(|inode| world.inodes.get(inode))
            .map(|f| f.content.clone()))
    }

    fn create(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let full = self.full(name);
        let mut world = self.world.lock();
        self.step(&mut world, "create", name)?;
        let inode = world.next_inode;
        world.next_inode += 1;
        world.inodes.insert(inode, SimFile::default());
        world.names.insert(full.clone(), inode);
        world
            .dir_ops
            .push((self.prefix.clone(), DirOp::Link(full, inode)));
        Ok(())
    }

    fn append(&self, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
        check_name(name)?;
        let mut world = self.world.lock();
        let inode = self.inode(&world, name)?;
        let result = self.step(&mut world, "append", name);
        let Some(file) = world.inodes.get_mut(&inode) else {
            return Err(StorageError::Write(format!("{name}: no such file")));
        };
        let offset = file.content.len() as u64;
        file.unsynced.push((offset, bytes.to_vec(), false));
        if result.is_ok() {
            file.content.extend_from_slice(bytes);
        }
        result
    }

    fn truncate(&self, name: &str, len: u64) -> Result<(), StorageError> {
        check_name(name)?;
        let mut world = self.world.lock();
        let inode = self.inode(&world, name)?;
        self.step(&mut world, "truncate", name)?;
        let Some(file) = world.inodes.get_mut(&inode) else {
            return Err(StorageError::Write(format!("{name}: no such file")));
        };
        file.content.truncate(len as usize);
        file.unsynced.push((len, Vec::new(), true));
        Ok(())
    }

    fn sync(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let mut world = self.world.lock();
        let inode = self
            .inode(&world, name)
            .map_err(|e| StorageError::Flush(e.to_string()))?;
        self.step(&mut world, "sync", name)
            .map_err(|e| StorageError::Flush(e.to_string()))?;
        if let Some(file) = world.inodes.get_mut(&inode) {
            file.durable = file.content.clone();
            file.unsynced.clear();
        }
        Ok(())
    }

    fn remove(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        let full = self.full(name);
        let mut world = self.world.lock();
        self.step(&mut world, "remove", name)?;
        if world.names.remove(&full).is_some() {
            world
                .dir_ops
                .push((self.prefix.clone(), DirOp::Unlink(full)));
        }
        Ok(())
    }

    fn rename(&self, from: &str, to: &str) -> Result<(), StorageError> {
        check_name(from)?;
        check_name(to)?;
        let (from_full, to_full) = (self.full(from), self.full(to));
        let mut world = self.world.lock();
        let inode = self.inode(&world, from)?;
        self.step(&mut world, "rename", from)?;
        world.names.remove(&from_full);
        world.names.insert(to_full.clone(), inode);
        world.dir_ops.push((
            self.prefix.clone(),
            DirOp::Rename(from_full, to_full, inode),
        ));
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        let mut world = self.world.lock();
        self.step(&mut world, "sync_dir", "")
            .map_err(|e| StorageError::Flush(e.to_string()))?;
        let (mine, rest): (Vec<_>, Vec<_>) = std::mem::take(&mut world.dir_ops)
            .into_iter()
            .partition(|(prefix, _)| *prefix == self.prefix);
        world.dir_ops = rest;
        for (_, op) in &mine {
            apply_dir_op(&mut world.durable_names, op);
        }
        Ok(())
    }

    fn subdir(&self, name: &str) -> Result<Arc<dyn Disk>, StorageError> {
        check_name(name)?;
        Ok(Arc::new(self.dir(name)))
    }

    fn size(&self) -> Result<u64, StorageError> {
        let world = self.world.lock();
        Ok(world
            .names
            .iter()
            .filter(|(k, _)| k.starts_with(self.prefix.as_str()))
            .filter_map(|(_, inode)| world.inodes.get(inode))
            .map(|f| f.content.len() as u64)
            .sum())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn only_synced_content_and_names_survive_a_crash() {
        let disk = SimDisk::new();
        disk.create("a").unwrap();
        disk.append("a", b"hello").unwrap();
        disk.sync("a").unwrap();
        // Name not synced yet: the file is gone after a crash.
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(crashed.read("a").unwrap(), None);
        disk.sync_dir().unwrap();
        disk.append("a", b" world").unwrap();
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(crashed.read("a").unwrap().as_deref(), Some(&b"hello"[..]));
        disk.sync("a").unwrap();
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(
            crashed.read("a").unwrap().as_deref(),
            Some(&b"hello world"[..])
        );
    }

    #[test]
    fn a_rename_is_durable_only_after_the_directory_sync() {
        let disk = SimDisk::new();
        disk.create("old").unwrap();
        disk.append("old", b"1").unwrap();
        disk.sync("old").unwrap();
        disk.sync_dir().unwrap();
        disk.create("new.tmp").unwrap();
        disk.append("new.tmp", b"2").unwrap();
        disk.sync("new.tmp").unwrap();
        disk.rename("new.tmp", "old").unwrap();
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(crashed.read("old").unwrap().as_deref(), Some(&b"1"[..]));
        assert_eq!(crashed.list().unwrap(), vec!["old".to_string()]);
        disk.sync_dir().unwrap();
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(crashed.read("old").unwrap().as_deref(), Some(&b"2"[..]));
    }

    #[test]
    fn a_fault_fails_that_step_and_every_later_one() {
        let disk = SimDisk::new();
        disk.create("a").unwrap();
        disk.fail_at(2);
        disk.append("a", b"x").unwrap();
        assert!(disk.append("a", b"y").is_err());
        assert!(disk.sync("a").is_err());
        assert_eq!(disk.steps(), 4);
    }

    #[test]
    fn tearing_keeps_a_sector_prefix_or_nothing_or_all() {
        let mut seen = std::collections::BTreeSet::new();
        for seed in 0..64 {
            let disk = SimDisk::new();
            disk.create("a").unwrap();
            disk.sync_dir().unwrap();
            disk.append("a", &[7u8; 4 * SIM_SECTOR]).unwrap();
            let crashed = disk.crash(CrashMode::Tear { seed });
            let len = crashed.read("a").unwrap().map_or(0, |c| c.len());
            assert_eq!(len % SIM_SECTOR, 0);
            seen.insert(len);
        }
        assert!(seen.contains(&0) && seen.contains(&(4 * SIM_SECTOR)) && seen.len() > 2);
    }

    #[test]
    fn directories_share_the_disk_but_not_their_names() {
        let disk = SimDisk::new();
        let (a, b) = (disk.dir("wal"), disk.dir("blobs"));
        a.create("x").unwrap();
        b.create("y").unwrap();
        assert_eq!(a.list().unwrap(), vec!["x".to_string()]);
        assert_eq!(b.list().unwrap(), vec!["y".to_string()]);
        a.sync_dir().unwrap();
        let crashed = disk.crash(CrashMode::DropUnsynced);
        assert_eq!(crashed.dir("wal").list().unwrap(), vec!["x".to_string()]);
        assert!(crashed.dir("blobs").list().unwrap().is_empty());
    }

    /// Ranged reads keep a handle per file: a file replaced by a rename or
    /// removed is read anew, never through the old handle.
    #[test]
    fn os_disk_ranged_reads_follow_renames_and_removals() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::open(dir.path()).unwrap();
        for d in [&disk as &dyn Disk, &SimDisk::new()] {
            d.create("a").unwrap();
            d.append("a", b"0123456789").unwrap();
            assert_eq!(d.read_at("a", 2, 3).unwrap(), Some(b"234".to_vec()));
            assert!(d.read_at("a", 8, 3).is_err(), "past the end");
            d.create("b.tmp").unwrap();
            d.append("b.tmp", b"abcdefghij").unwrap();
            d.rename("b.tmp", "a").unwrap();
            assert_eq!(d.read_at("a", 2, 3).unwrap(), Some(b"cde".to_vec()));
            d.remove("a").unwrap();
            assert_eq!(d.read_at("a", 2, 3).unwrap(), None);
        }
    }

    #[test]
    fn os_disk_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let disk = OsDisk::open(&dir.path().join("d")).unwrap();
        disk.create("a").unwrap();
        disk.append("a", b"abc").unwrap();
        disk.append("a", b"def").unwrap();
        disk.sync("a").unwrap();
        disk.sync_dir().unwrap();
        disk.truncate("a", 4).unwrap();
        assert_eq!(disk.read("a").unwrap().as_deref(), Some(&b"abcd"[..]));
        disk.rename("a", "b").unwrap();
        assert_eq!(disk.list().unwrap(), vec!["b".to_string()]);
        assert!(disk.create("../x").is_err());
        disk.remove("b").unwrap();
        assert_eq!(disk.read("b").unwrap(), None);
    }
}
