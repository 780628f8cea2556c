//! Durable checkpoints: the fallback when no peer holds the last committed state (the whole
//! group restarted).
//!
//! A checkpoint is one file `ckpt-<step, 20 digits>.rrc`: a 64-byte header (magic, format
//! version, step, payload length, SHA-256 of the payload, flags: whether it is the job's final
//! state) and the payload. It is written to a
//! temporary name, synced, renamed into place and the directory synced, so a crash leaves either
//! the old set of checkpoints or the new one, never a torn file under a checkpoint name. Only the
//! newest `keep` checkpoints are kept. Loading skips files whose header or checksum is wrong
//! (and says so), so a corrupt newest checkpoint falls back to the one before.

use std::{
    fs::{self, File},
    io::{self, Write},
    path::{Path, PathBuf},
};

use ring::digest::{SHA256, digest};
use tracing::warn;

const MAGIC: [u8; 8] = *b"RRCKPT01";
const HEADER_LEN: usize = 64;

/// Why a checkpoint could not be written or read.
#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    /// The file system refused. State: a save may have left a temporary file, never a partial
    /// checkpoint; the previous checkpoints are intact. Recovery: fix the disk and save again.
    #[error("checkpoint I/O on {path}: {source}")]
    Io {
        /// The file or directory involved.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
}

/// A loaded checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The training step that was committed.
    pub step: u64,
    /// The committed state.
    pub state: Vec<u8>,
    /// Whether it is the job's final state (saved by `Group::finish`).
    pub is_final: bool,
}

/// A directory of checkpoints.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
    keep: usize,
}

impl Store {
    /// Checkpoints in `dir` (created if missing), keeping the newest `keep` (at least 1).
    pub fn open(dir: impl Into<PathBuf>, keep: usize) -> Result<Store, CheckpointError> {
        let dir = dir.into();
        fs::create_dir_all(&dir).map_err(|e| io_err(&dir, e))?;
        Ok(Store {
            dir,
            keep: keep.max(1),
        })
    }

    /// Writes `state` as the checkpoint of `step` (marked as the job's final state if
    /// `is_final`), atomically, then prunes old checkpoints.
    pub fn save(
        &self,
        step: u64,
        state: &[u8],
        is_final: bool,
    ) -> Result<PathBuf, CheckpointError> {
        let path = self.dir.join(file_name(step));
        let tmp = self.dir.join(format!(".{}.tmp", file_name(step)));
        let write = || -> io::Result<()> {
            let mut f = File::create(&tmp)?;
            f.write_all(&header(step, state, is_final))?;
            f.write_all(state)?;
            f.sync_all()?;
            fs::rename(&tmp, &path)?;
            File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| io_err(&path, e))?;
        self.prune()?;
        Ok(path)
    }

    /// The newest checkpoint that reads back intact, if any.
    pub fn load_latest(&self) -> Result<Option<Checkpoint>, CheckpointError> {
        for (step, path) in self.list()?.into_iter().rev() {
            match read(&path) {
                Ok(c) if c.step == step => return Ok(Some(c)),
                Ok(c) => {
                    warn!(path = %path.display(), step = c.step, "checkpoint name and header disagree; skipped")
                }
                Err(why) => warn!(path = %path.display(), %why, "unreadable checkpoint skipped"),
            }
        }
        Ok(None)
    }

    /// Steps and paths of the checkpoint files present, oldest first.
    pub fn list(&self) -> Result<Vec<(u64, PathBuf)>, CheckpointError> {
        let entries = fs::read_dir(&self.dir).map_err(|e| io_err(&self.dir, e))?;
        let mut found: Vec<(u64, PathBuf)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().into_string().ok()?;
                let step = name
                    .strip_prefix("ckpt-")?
                    .strip_suffix(".rrc")?
                    .parse()
                    .ok()?;
                Some((step, e.path()))
            })
            .collect();
        found.sort();
        Ok(found)
    }

    fn prune(&self) -> Result<(), CheckpointError> {
        let all = self.list()?;
        for (_, path) in &all[..all.len().saturating_sub(self.keep)] {
            fs::remove_file(path).map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }
}

fn file_name(step: u64) -> String {
    format!("ckpt-{step:020}.rrc")
}

/// Bit 0 of the flags byte: the job's final state.
const FLAG_FINAL: u8 = 1;

fn header(step: u64, state: &[u8], is_final: bool) -> [u8; HEADER_LEN] {
    let mut h = [0u8; HEADER_LEN];
    h[0..8].copy_from_slice(&MAGIC);
    h[8..16].copy_from_slice(&step.to_le_bytes());
    h[16..24].copy_from_slice(&(state.len() as u64).to_le_bytes());
    h[24..56].copy_from_slice(digest(&SHA256, state).as_ref());
    h[56] = if is_final { FLAG_FINAL } else { 0 };
    h
}

/// Reads and verifies one checkpoint file.
fn read(path: &Path) -> Result<Checkpoint, String> {
    Checkpoint::decode(&fs::read(path).map_err(|e| e.to_string())?)
}

impl Checkpoint {
    /// Verifies and decodes a checkpoint file's bytes; `Err` says why they are not one.
    pub fn decode(bytes: &[u8]) -> Result<Checkpoint, String> {
        let (h, state) = bytes
            .split_at_checked(HEADER_LEN)
            .ok_or("shorter than a header")?;
        if h[0..8] != MAGIC {
            return Err("not a ringrun checkpoint".into());
        }
        let step = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(h[16..24].try_into().expect("8 bytes"));
        if len != state.len() as u64 {
            return Err(format!(
                "header says {len} bytes of state, file has {}",
                state.len()
            ));
        }
        if h[24..56] != *digest(&SHA256, state).as_ref() {
            return Err("checksum mismatch".into());
        }
        Ok(Checkpoint {
            step,
            state: state.to_vec(),
            is_final: h[56] & FLAG_FINAL != 0,
        })
    }
}

fn io_err(path: &Path, source: io::Error) -> CheckpointError {
    CheckpointError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ringrun-ckpt-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn keeps_the_newest_two_and_loads_the_newest() {
        let dir = scratch("keep");
        let s = Store::open(&dir, 2).unwrap();
        assert_eq!(s.load_latest().unwrap(), None);
        for step in [3, 10, 11] {
            s.save(step, format!("state {step}").as_bytes(), step == 11)
                .unwrap();
        }
        let steps: Vec<u64> = s.list().unwrap().into_iter().map(|(s, _)| s).collect();
        assert_eq!(steps, vec![10, 11]);
        assert_eq!(
            s.load_latest().unwrap(),
            Some(Checkpoint {
                step: 11,
                state: b"state 11".to_vec(),
                is_final: true,
            })
        );
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_corrupt_newest_checkpoint_falls_back_to_the_previous() {
        let dir = scratch("corrupt");
        let s = Store::open(&dir, 2).unwrap();
        s.save(1, b"good", false).unwrap();
        let newest = s.save(2, b"will be damaged", false).unwrap();
        let mut bytes = fs::read(&newest).unwrap();
        *bytes.last_mut().unwrap() ^= 0xff;
        fs::write(&newest, bytes).unwrap();
        assert_eq!(
            s.load_latest().unwrap(),
            Some(Checkpoint {
                step: 1,
                state: b"good".to_vec(),
                is_final: false,
            })
        );
        fs::write(&newest, b"short").unwrap();
        assert_eq!(s.load_latest().unwrap().map(|c| c.step), Some(1));
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn temporary_files_are_ignored() {
        let dir = scratch("tmp");
        let s = Store::open(&dir, 2).unwrap();
        fs::write(dir.join(".ckpt-00000000000000000009.rrc.tmp"), b"torn").unwrap();
        assert_eq!(s.load_latest().unwrap(), None);
        fs::remove_dir_all(dir).unwrap();
    }
}
