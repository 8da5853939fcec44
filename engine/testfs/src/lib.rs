//! A FUSE filesystem for power-loss tests, after Jepsen's LazyFS: file data that was written
//! but not yet `fsync`ed (or `fdatasync`ed) lives only in memory and is dropped at a simulated
//! power cut; whatever a file's last sync covered survives. Namespace changes (create, rename,
//! unlink, mkdir) are durable at once, as on a journaling filesystem — a cut loses data, not
//! names — which is also LazyFS's default model.
//!
//! ```no_run
//! # fn main() -> std::io::Result<()> {
//! let disk = switchyard_testfs::Disk::new();
//! let mounted = disk.mount("/tmp/lazy")?;
//! // … run a process that writes under /tmp/lazy, kill it …
//! let lost = mounted.power_cut()?; // unmounted; unsynced bytes are gone
//! let mounted = disk.mount("/tmp/lazy")?; // "after the reboot"
//! # let _ = (lost, mounted); Ok(()) }
//! ```
//!
//! Files are kept in memory in full (fine for test stores of some hundred MB). Data travels
//! with `FOPEN_DIRECT_IO` and attributes are not cached, so the kernel's page cache never holds
//! a copy the model does not know about. Mounting needs root (or `fusermount3`) and `/dev/fuse`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

/// The unit the model tracks dirty data in.
const PAGE: usize = 4096;
/// Nothing is cached by the kernel: every lookup and stat asks the model.
const TTL: Duration = Duration::ZERO;

/// A simulated disk: survives unmounts, loses unsynced data at a power cut.
#[derive(Clone, Default)]
pub struct Disk {
    state: Arc<Mutex<State>>,
}

/// What a power cut dropped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CutReport {
    /// Files that had unsynced data.
    pub files: usize,
    /// Pages (4 KiB) of unsynced data dropped.
    pub pages: usize,
}

/// Counters since the disk was made.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiskStats {
    /// `fsync`/`fdatasync` calls on files.
    pub fsyncs: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Power cuts.
    pub cuts: u64,
}

/// The disk mounted somewhere; unmounted when dropped (a clean unmount keeps everything, as
/// a clean shutdown that syncs would).
pub struct Mounted {
    session: Option<fuser::BackgroundSession>,
    disk: Disk,
}

impl Disk {
    /// An empty disk (one root directory).
    pub fn new() -> Self {
        Self::default()
    }

    /// Mounts the disk at `at` (an existing, empty directory).
    pub fn mount(&self, at: impl AsRef<Path>) -> io::Result<Mounted> {
        let owner = std::fs::metadata(at.as_ref())?;
        {
            let mut state = self.lock();
            use std::os::unix::fs::MetadataExt;
            state.uid = owner.uid();
            state.gid = owner.gid();
        }
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            fuser::MountOption::FSName("switchyard-testfs".into()),
            fuser::MountOption::NoAtime,
        ];
        let session = fuser::spawn_mount(Fs { disk: self.clone() }, at.as_ref(), &config)?;
        Ok(Mounted {
            session: Some(session),
            disk: self.clone(),
        })
    }

    /// Counters since the disk was made.
    pub fn stats(&self) -> DiskStats {
        self.lock().stats
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic in one handler must not wedge the disk for the test that inspects it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Mounted {
    /// Cuts the power: unmounts (every process using the mount must be gone — kill it first)
    /// and drops every byte not covered by its file's last sync.
    pub fn power_cut(mut self) -> io::Result<CutReport> {
        self.unmount()?;
        let mut state = self.disk.lock();
        state.stats.cuts += 1;
        let mut report = CutReport::default();
        for node in state.nodes.values_mut() {
            if let Kind::File(file) = &mut node.kind {
                if !file.dirty.is_empty() || file.data.len() != file.durable.len() {
                    report.files += 1;
                    report.pages += file.dirty.len();
                }
                file.data = file.durable.clone();
                file.dirty.clear();
            }
        }
        Ok(report)
    }

    fn unmount(&mut self) -> io::Result<()> {
        match self.session.take() {
            Some(session) => session.umount_and_join(),
            None => Ok(()),
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.unmount();
    }
}

#[derive(Default)]
struct File {
    /// What readers see.
    data: Vec<u8>,
    /// What survives a power cut.
    durable: Vec<u8>,
    /// Pages of `data` that differ from `durable`.
    dirty: BTreeSet<usize>,
}

impl File {
    fn mark(&mut self, from: usize, to: usize) {
        if to > from {
            self.dirty.extend(from / PAGE..to.div_ceil(PAGE));
        }
    }

    fn write(&mut self, offset: usize, bytes: &[u8]) {
        let end = offset + bytes.len();
        let old = self.data.len();
        if end > old {
            self.data.resize(end, 0);
        }
        self.data[offset..end].copy_from_slice(bytes);
        self.mark(offset.min(old), end);
    }

    fn truncate(&mut self, size: usize) {
        let old = self.data.len();
        self.data.resize(size, 0);
        self.mark(old.min(size), old.max(size));
    }

    fn sync(&mut self) {
        let len = self.data.len();
        self.durable.resize(len, 0);
        for page in std::mem::take(&mut self.dirty) {
            let start = page * PAGE;
            if start < len {
                let end = (start + PAGE).min(len);
                self.durable[start..end].copy_from_slice(&self.data[start..end]);
            }
        }
    }
}

enum Kind {
    Dir {
        parent: u64,
        children: BTreeMap<OsString, u64>,
    },
    File(File),
}

struct Node {
    kind: Kind,
    perm: u16,
    mtime: SystemTime,
}

struct State {
    nodes: HashMap<u64, Node>,
    next: u64,
    uid: u32,
    gid: u32,
    stats: DiskStats,
}

impl Default for State {
    fn default() -> Self {
        let root = Node {
            kind: Kind::Dir {
                parent: 1,
                children: BTreeMap::new(),
            },
            perm: 0o755,
            mtime: SystemTime::now(),
        };
        State {
            nodes: HashMap::from([(1, root)]),
            next: 2,
            uid: 0,
            gid: 0,
            stats: DiskStats::default(),
        }
    }
}

impl State {
    fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let node = self.nodes.get(&ino).ok_or(Errno::ENOENT)?;
        let (kind, size, nlink) = match &node.kind {
            Kind::Dir { .. } => (FileType::Directory, 0, 2),
            Kind::File(f) => (FileType::RegularFile, f.data.len() as u64, 1),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: node.mtime,
            mtime: node.mtime,
            ctime: node.mtime,
            crtime: node.mtime,
            kind,
            perm: node.perm,
            nlink,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: PAGE as u32,
            flags: 0,
        })
    }

    fn children(&mut self, ino: u64) -> Result<&mut BTreeMap<OsString, u64>, Errno> {
        match &mut self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?.kind {
            Kind::Dir { children, .. } => Ok(children),
            Kind::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn child(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        self.children(parent)?
            .get(name)
            .copied()
            .ok_or(Errno::ENOENT)
    }

    fn file(&mut self, ino: u64) -> Result<&mut File, Errno> {
        let node = self.nodes.get_mut(&ino).ok_or(Errno::ENOENT)?;
        node.mtime = SystemTime::now();
        match &mut node.kind {
            Kind::File(f) => Ok(f),
            Kind::Dir { .. } => Err(Errno::EISDIR),
        }
    }

    fn add(&mut self, parent: u64, name: &OsStr, kind: Kind, perm: u16) -> Result<u64, Errno> {
        let ino = self.next;
        let children = self.children(parent)?;
        if children.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        children.insert(name.to_os_string(), ino);
        self.next += 1;
        let mtime = SystemTime::now();
        self.nodes.insert(ino, Node { kind, perm, mtime });
        Ok(ino)
    }

    /// Unlinks `name` (a file, or an empty directory when `dir`). The node itself stays: a
    /// process may still have it open.
    fn remove(&mut self, parent: u64, name: &OsStr, dir: bool) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        match (&self.nodes[&ino].kind, dir) {
            (Kind::Dir { children, .. }, true) if !children.is_empty() => {
                return Err(Errno::ENOTEMPTY)
            }
            (Kind::Dir { .. }, false) => return Err(Errno::EISDIR),
            (Kind::File(_), true) => return Err(Errno::ENOTDIR),
            _ => {}
        }
        self.children(parent)?.remove(name);
        Ok(())
    }

    fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        no_replace: bool,
    ) -> Result<(), Errno> {
        let ino = self.child(parent, name)?;
        if let Ok(existing) = self.child(new_parent, new_name) {
            if no_replace {
                return Err(Errno::EEXIST);
            }
            if let Kind::Dir { children, .. } = &self.nodes[&existing].kind {
                if !children.is_empty() {
                    return Err(Errno::ENOTEMPTY);
                }
            }
        }
        self.children(parent)?.remove(name);
        self.children(new_parent)?
            .insert(new_name.to_os_string(), ino);
        if let Some(Node {
            kind: Kind::Dir { parent, .. },
            ..
        }) = self.nodes.get_mut(&ino)
        {
            *parent = new_parent;
        }
        Ok(())
    }
}

struct Fs {
    disk: Disk,
}

fn answer_entry(state: Result<FileAttr, Errno>, reply: ReplyEntry) {
    match state {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn answer_attr(state: Result<FileAttr, Errno>, reply: ReplyAttr) {
    match state {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

fn answer_empty(result: Result<(), Errno>, reply: ReplyEmpty) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

fn permissions(mode: u32, umask: u32) -> u16 {
    (mode & !umask & 0o7777) as u16
}

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let mut state = self.disk.lock();
        let found = state.child(parent.0, name).and_then(|ino| state.attr(ino));
        answer_entry(found, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        answer_attr(self.disk.lock().attr(ino.0), reply);
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let mut state = self.disk.lock();
        let changed = (|| {
            if let Some(size) = size {
                state.file(ino.0)?.truncate(size as usize);
            }
            if let Some(mode) = mode {
                state.nodes.get_mut(&ino.0).ok_or(Errno::ENOENT)?.perm = permissions(mode, 0);
            }
            state.attr(ino.0)
        })();
        answer_attr(changed, reply);
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let mut state = self.disk.lock();
        let kind = Kind::Dir {
            parent: parent.0,
            children: BTreeMap::new(),
        };
        let made = state
            .add(parent.0, name, kind, permissions(mode, umask))
            .and_then(|ino| state.attr(ino));
        answer_entry(made, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer_empty(self.disk.lock().remove(parent.0, name, false), reply);
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        answer_empty(self.disk.lock().remove(parent.0, name, true), reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let no_replace = flags.contains(RenameFlags::RENAME_NOREPLACE);
        if !(flags - RenameFlags::RENAME_NOREPLACE).is_empty() {
            return reply.error(Errno::EINVAL);
        }
        let renamed = self
            .disk
            .lock()
            .rename(parent.0, name, newparent.0, newname, no_replace);
        answer_empty(renamed, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.disk.lock().nodes.get(&ino.0) {
            Some(_) => reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO),
            None => reply.error(Errno::ENOENT),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut state = self.disk.lock();
        match state.file(ino.0) {
            Ok(file) => {
                let start = (offset as usize).min(file.data.len());
                let end = (start + size as usize).min(file.data.len());
                reply.data(&file.data[start..end]);
            }
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut state = self.disk.lock();
        match state.file(ino.0) {
            Ok(file) => {
                file.write(offset as usize, data);
                state.stats.bytes_written += data.len() as u64;
                reply.written(data.len() as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        // close(2) makes nothing durable.
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut state = self.disk.lock();
        let synced = state.file(ino.0).map(File::sync);
        if synced.is_ok() {
            state.stats.fsyncs += 1;
        }
        answer_empty(synced, reply);
    }

    fn opendir(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let state = self.disk.lock();
        let Some(Node {
            kind: Kind::Dir { parent, children },
            ..
        }) = state.nodes.get(&ino.0)
        else {
            return reply.error(Errno::ENOTDIR);
        };
        let mut entries = vec![
            (ino.0, FileType::Directory, OsString::from(".")),
            (*parent, FileType::Directory, OsString::from("..")),
        ];
        for (name, child) in children {
            let kind = match state.nodes[child].kind {
                Kind::Dir { .. } => FileType::Directory,
                Kind::File(_) => FileType::RegularFile,
            };
            entries.push((*child, kind, name.clone()));
        }
        for (i, (child, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(child), i as u64 + 1, kind, name) {
                break;
            }
        }
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        // Namespace changes are durable at once in this model.
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // 4 TiB free: the engine checks free space before it writes.
        let blocks = 1 << 30;
        reply.statfs(
            blocks,
            blocks,
            blocks,
            1 << 20,
            1 << 20,
            PAGE as u32,
            255,
            PAGE as u32,
        );
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: fuser::AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut state = self.disk.lock();
        let made = state
            .add(
                parent.0,
                name,
                Kind::File(File::default()),
                permissions(mode, umask),
            )
            .and_then(|ino| state.attr(ino));
        match made {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_DIRECT_IO,
            ),
            Err(e) => reply.error(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sync_keeps_exactly_the_pages_written_before_it() {
        let mut f = File::default();
        f.write(0, &[1; 10_000]);
        f.sync();
        f.write(5000, &[2; 100]);
        f.write(20_000, &[3; 10]);
        assert_eq!(f.dirty.iter().copied().collect::<Vec<_>>(), [1, 2, 3, 4]);
        f.sync();
        assert_eq!(f.durable, f.data);
        f.truncate(100);
        f.write(200, &[4; 10]);
        assert_ne!(f.durable, f.data);
        f.sync();
        assert_eq!(f.durable, f.data);
    }
}
