//! One rank's shared-memory segment: a file under `/dev/shm`, its authenticated header, and
//! the mapping.
//!
//! Layout: a 4 KiB header page, then one 128-byte control block per rank (the ring *from* that
//! rank into this one; the slot of the owner itself is never used), padded to a page, then the
//! owner's arena control page (`arena`), then one data area of `ring_bytes` per rank, then the
//! owner's [`ARENA_BUFFERS`] arena buffers of `arena_bytes` each (written by the owner, read by
//! every rank).
//!
//! Header (little endian): magic `RRSHM003` | rank u32 | size u32 | epoch u64 | pid u32 |
//! reserved u32 | ring bytes u64 | nonce (32) | doorbell name (64) | arena bytes u64 |
//! MAC (32). The MAC is
//! `HMAC(job secret, label | header before the MAC | file name)`, so a process without the
//! secret can neither forge a segment nor make a rank accept another rank's segment.

use std::{
    fs::{File, OpenOptions},
    os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
    ptr::NonNull,
    sync::Arc,
};

use crate::{
    error::{CollectiveError, Result},
    transport::auth::{self, JobSecret},
};

/// Where segments live: tmpfs, so the pages are memory and vanish with the last mapping.
pub(super) const DIR: &str = "/dev/shm";
/// File names start with this, then the creator's pid, so leaks can be traced to a process.
pub(super) const PREFIX: &str = "ringrun-";
pub(crate) const DOORBELL_LEN: usize = 64;

/// Removes the segments process `pid` created and had not yet unlinked: a process killed during
/// set-up leaves its segment named, and its parent (the launcher that reaped it) calls this.
/// Returns how many were removed.
pub fn remove_leftovers_of(pid: u32) -> usize {
    let prefix = format!("{PREFIX}{pid}-");
    let Ok(dir) = std::fs::read_dir(DIR) else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.starts_with(&prefix))
        })
        .filter(|e| std::fs::remove_file(e.path()).is_ok())
        .count()
}
/// Bytes of one ring's control block (two cache lines: producer's and consumer's).
pub(super) const CTL_BYTES: usize = 128;
const HEADER_BYTES: usize = 4096;
const PAGE: usize = 4096;
const MAGIC: [u8; 8] = *b"RRSHM003";
const MAC_LABEL: &str = "ringrun shm segment v3";
/// Header bytes covered by the MAC; the MAC follows them.
pub(crate) const SIGNED_LEN: usize = 144;
/// Bytes of the arena control page.
pub(super) const ARENA_CTL_BYTES: usize = PAGE;
/// Arena buffers per rank: the pipelined allreduce stages round `t + 1` while peers may still
/// read round `t`, and round `t - 1` until the barrier that ends it (`arena` explains).
pub(super) const ARENA_BUFFERS: usize = 3;
/// Largest arena buffer a header may ask us to map.
const MAX_ARENA: u64 = 1 << 30;
const MAC_AT: usize = SIGNED_LEN;
/// Largest world a segment is made for (bounds what a header may ask us to map).
const MAX_RANKS: u32 = 4096;

/// What a segment's header says about its owner.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Identity {
    pub(crate) rank: u32,
    pub(crate) size: u32,
    pub(crate) epoch: u64,
    pub(crate) pid: u32,
    pub(crate) ring_bytes: u64,
    pub(crate) doorbell: [u8; DOORBELL_LEN],
    /// Bytes of each of the owner's arena buffers (a multiple of the page; 0: no arena).
    pub(crate) arena_bytes: u64,
}

impl Identity {
    fn rings_at(&self) -> usize {
        HEADER_BYTES + ctl_area(self.size as usize) + ARENA_CTL_BYTES
    }

    fn arena_at(&self) -> usize {
        self.rings_at() + self.size as usize * self.ring_bytes as usize
    }

    pub(crate) fn total_len(&self) -> usize {
        self.arena_at() + ARENA_BUFFERS * self.arena_bytes as usize
    }

    pub(crate) fn encode(&self, nonce: &[u8; 32]) -> [u8; SIGNED_LEN] {
        let mut h = [0u8; SIGNED_LEN];
        h[0..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&self.rank.to_le_bytes());
        h[12..16].copy_from_slice(&self.size.to_le_bytes());
        h[16..24].copy_from_slice(&self.epoch.to_le_bytes());
        h[24..28].copy_from_slice(&self.pid.to_le_bytes());
        h[32..40].copy_from_slice(&self.ring_bytes.to_le_bytes());
        h[40..72].copy_from_slice(nonce);
        h[72..136].copy_from_slice(&self.doorbell);
        h[136..144].copy_from_slice(&self.arena_bytes.to_le_bytes());
        h
    }

    fn decode(h: &[u8; SIGNED_LEN]) -> std::result::Result<Identity, String> {
        if h[0..8] != MAGIC {
            return Err("not a ringrun segment (bad magic)".into());
        }
        let u32_at = |i: usize| u32::from_le_bytes(h[i..i + 4].try_into().expect("4 bytes"));
        let u64_at = |i: usize| u64::from_le_bytes(h[i..i + 8].try_into().expect("8 bytes"));
        let mut doorbell = [0u8; DOORBELL_LEN];
        doorbell.copy_from_slice(&h[72..136]);
        let id = Identity {
            rank: u32_at(8),
            size: u32_at(12),
            epoch: u64_at(16),
            pid: u32_at(24),
            ring_bytes: u64_at(32),
            doorbell,
            arena_bytes: u64_at(136),
        };
        let ring_ok = id.ring_bytes.is_power_of_two() && id.ring_bytes <= 1 << 30;
        let arena_ok = id.arena_bytes.is_multiple_of(PAGE as u64) && id.arena_bytes <= MAX_ARENA;
        if id.size == 0 || id.size > MAX_RANKS || !ring_ok || !arena_ok || id.rank >= id.size {
            return Err(format!("implausible segment header {id:?}"));
        }
        Ok(id)
    }
}

fn ctl_area(size: usize) -> usize {
    (size * CTL_BYTES).div_ceil(PAGE) * PAGE
}

/// A shared mapping of a whole segment, unmapped on drop.
pub(super) struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    size: usize,
    ring_bytes: usize,
    rings_at: usize,
    arena_at: usize,
    arena_bytes: usize,
}

// SAFETY: the mapping is plain shared memory that lives until `drop`; every access through it
// goes through atomics (control blocks) or the ring protocol, which hands each data byte to one
// side at a time. Nothing in it is tied to the thread that mapped it.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&Mapping` only exposes raw pointers and atomics.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn map(file: &File, len: usize, id: &Identity) -> Result<Mapping> {
        // SAFETY: a fresh mapping chosen by the kernel (no address hint, so nothing existing is
        // replaced) of a file we hold open and whose length we checked or set to `len`.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                std::os::fd::AsRawFd::as_raw_fd(file),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(setup(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        Ok(Mapping {
            ptr: NonNull::new(ptr.cast()).expect("mmap never returns null on success"),
            len,
            size: id.size as usize,
            ring_bytes: id.ring_bytes as usize,
            rings_at: id.rings_at(),
            arena_at: id.arena_at(),
            arena_bytes: id.arena_bytes as usize,
        })
    }

    /// Control block of the ring from rank `from` into this segment's owner.
    pub(super) fn ctl(&self, from: usize) -> NonNull<u8> {
        assert!(from < self.size, "ring slot {from} outside the segment");
        // SAFETY: HEADER_BYTES + from * CTL_BYTES + CTL_BYTES <= HEADER_BYTES + ctl_area <= len.
        unsafe { self.ptr.add(HEADER_BYTES + from * CTL_BYTES) }
    }

    /// Data area of the ring from rank `from`, and its length.
    pub(super) fn data(&self, from: usize) -> (NonNull<u8>, usize) {
        assert!(from < self.size, "ring slot {from} outside the segment");
        let at = self.rings_at + from * self.ring_bytes;
        debug_assert!(at + self.ring_bytes <= self.len);
        // SAFETY: in bounds of the mapping, as computed by `Identity::total_len`.
        (unsafe { self.ptr.add(at) }, self.ring_bytes)
    }

    /// The owner's arena control page (page-aligned).
    pub(super) fn arena_ctl(&self) -> NonNull<u8> {
        // SAFETY: the page before the rings, inside the mapping (`Identity::rings_at`).
        unsafe { self.ptr.add(self.rings_at - ARENA_CTL_BYTES) }
    }

    /// The owner's arena buffer `index` (below [`ARENA_BUFFERS`]), and its length (0: no arena).
    pub(super) fn arena_buf(&self, index: usize) -> (NonNull<u8>, usize) {
        assert!(index < ARENA_BUFFERS, "arena buffer {index}");
        let at = self.arena_at + index * self.arena_bytes;
        debug_assert!(at + self.arena_bytes <= self.len);
        // SAFETY: in bounds of the mapping, as computed by `Identity::total_len`.
        (unsafe { self.ptr.add(at) }, self.arena_bytes)
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the region `map` created; every ring endpoint holds an `Arc` of
        // this mapping, so nothing points into it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// This rank's own segment while it still has a name; dropping it unlinks the file.
pub(super) struct Owned {
    pub(super) map: Arc<Mapping>,
    pub(super) name: String,
    path: Option<PathBuf>,
    /// The owner of our file, which the files of peers must share.
    pub(super) uid: u32,
}

impl Owned {
    /// Creates, sizes and maps a fresh segment (exclusive create, mode 0600) and signs its
    /// header.
    pub(super) fn create(id: &Identity, secret: &JobSecret) -> Result<Owned> {
        let random = auth::nonce()?;
        let hex: String = random[..12].iter().map(|b| format!("{b:02x}")).collect();
        let name = format!("{PREFIX}{}-{hex}", id.pid);
        let path = Path::new(DIR).join(&name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| setup(format!("creating {}: {e}", path.display())))?;
        // From here on the file is ours to remove, whatever fails.
        let mut owned_path = Some(path.clone());
        let unlink_on_err = scopeguard(&mut owned_path);
        let len = id.total_len();
        file.set_len(len as u64)
            .map_err(|e| setup(format!("sizing {} to {len} bytes: {e}", path.display())))?;
        let nonce = auth::nonce()?;
        let header = sign_header(&id.encode(&nonce), &name, secret);
        file.write_all_at(&header, 0)
            .map_err(|e| setup(format!("writing {}: {e}", path.display())))?;
        let uid = file.metadata().map_err(|e| setup(e.to_string()))?.uid();
        let map = Arc::new(Mapping::map(&file, len, id)?);
        let path = unlink_on_err.disarm();
        Ok(Owned {
            map,
            name,
            path,
            uid,
        })
    }

    /// Removes the name; the memory stays until the last mapping goes.
    pub(super) fn unlink(&mut self) {
        if let Some(p) = self.path.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl Drop for Owned {
    fn drop(&mut self) {
        self.unlink();
    }
}

/// Opens a peer's segment by name, checks that it is a private file of our user whose header
/// carries a valid MAC under `secret`, and maps it.
pub(super) fn attach(name: &str, uid: u32, secret: &JobSecret) -> Result<(Mapping, Identity)> {
    let plausible = name.starts_with(PREFIX)
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !plausible {
        return Err(setup(format!("not a segment name: {name:?}")));
    }
    let path = Path::new(DIR).join(name);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(&path)
        .map_err(|e| setup(format!("opening {}: {e}", path.display())))?;
    let meta = file.metadata().map_err(|e| setup(e.to_string()))?;
    if meta.uid() != uid || meta.permissions().mode() & 0o077 != 0 || !meta.is_file() {
        return Err(setup(format!(
            "{} is not a private file of this user",
            path.display()
        )));
    }
    let mut header = [0u8; HEADER_LEN];
    file.read_exact_at(&mut header, 0)
        .map_err(|e| setup(format!("reading {}: {e}", path.display())))?;
    let id = verify_header(&header, name, meta.len(), secret)
        .map_err(|e| setup(format!("{}: {e}", path.display())))?;
    Ok((Mapping::map(&file, id.total_len(), &id)?, id))
}

/// Bytes of a segment's header as a peer reads it: the signed part and its MAC.
pub(crate) const HEADER_LEN: usize = SIGNED_LEN + 32;

/// Checks the header of segment `name`, a file of `file_len` bytes: its MAC under the job's
/// secret, its fields, and that the file is as long as the header says.
pub(crate) fn verify_header(
    header: &[u8; HEADER_LEN],
    name: &str,
    file_len: u64,
    secret: &JobSecret,
) -> std::result::Result<Identity, String> {
    let signed: &[u8; SIGNED_LEN] = header[..SIGNED_LEN].try_into().expect("length");
    if !secret.verify_mac(MAC_LABEL, &[signed, name.as_bytes()], &header[MAC_AT..]) {
        return Err(
            "header MAC does not verify: its creator does not hold this job's secret".into(),
        );
    }
    let id = Identity::decode(signed)?;
    let len = id.total_len();
    if file_len != len as u64 {
        return Err(format!(
            "the file holds {file_len} bytes, its header says {len}"
        ));
    }
    Ok(id)
}

/// A header signed like `Owned::create` signs one: `signed` (the fields) and its MAC.
pub(crate) fn sign_header(
    signed: &[u8; SIGNED_LEN],
    name: &str,
    secret: &JobSecret,
) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[..SIGNED_LEN].copy_from_slice(signed);
    h[MAC_AT..].copy_from_slice(&secret.mac(MAC_LABEL, &[signed, name.as_bytes()]));
    h
}

fn setup(msg: String) -> CollectiveError {
    CollectiveError::Setup(format!("shared memory: {msg}"))
}

/// Unlinks the path it guards on drop unless disarmed (set-up failures leave no file behind).
struct Guard<'a>(&'a mut Option<PathBuf>);

fn scopeguard(p: &mut Option<PathBuf>) -> Guard<'_> {
    Guard(p)
}

impl Guard<'_> {
    fn disarm(self) -> Option<PathBuf> {
        let mut this = std::mem::ManuallyDrop::new(self);
        this.0.take()
    }
}

impl Drop for Guard<'_> {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_mac() {
        let id = Identity {
            rank: 1,
            size: 3,
            epoch: 9,
            pid: std::process::id(),
            ring_bytes: 4096,
            doorbell: [7; DOORBELL_LEN],
            arena_bytes: 8192,
        };
        let secret = JobSecret::from_bytes(b"segment test");
        let mut seg = Owned::create(&id, &secret).unwrap();
        let (map, got) = attach(&seg.name, seg.uid, &secret).unwrap();
        assert_eq!(got, id);
        assert_eq!(map.len, id.total_len());
        let wrong = JobSecret::from_bytes(b"another job");
        let e = attach(&seg.name, seg.uid, &wrong).err().unwrap();
        assert!(e.to_string().contains("secret"), "{e}");
        assert!(attach("../etc/passwd", seg.uid, &secret).is_err());
        let path = Path::new(DIR).join(&seg.name);
        seg.unlink();
        assert!(!path.exists());
        assert!(attach(&seg.name, seg.uid, &secret).is_err());
    }
}
