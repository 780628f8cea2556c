//! `ringrun launch --input PATH`: the job's input files, listed once before any worker starts,
//! and each launch rank's share of them, balanced by bytes (XLearning's `--input` and
//! `INPUT_FILE_LIST`).
//!
//! Every host's launcher lists the same paths and computes the shares from that listing and the
//! launch-time world alone, so all hosts agree on who reads what without talking. Workers get
//! absolute paths (relative ones are taken from the launcher's working directory), since a
//! worker may change directory. Elastic code must not rely on its launch-time share (the world
//! changes); it reads the whole list from the manifest file, `SIZE<TAB>PATH` a line.

use std::{
    cmp::Reverse,
    collections::{BinaryHeap, HashSet},
    fmt, fs,
    io::Write,
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};

/// The most bytes of one `NAME=value` string that Linux passes to a program (MAX_ARG_STRLEN).
const MAX_VAR_BYTES: usize = 128 * 1024;

/// The manifest's name in the log directory.
const MANIFEST: &str = "input-manifest.tsv";

/// A bad `--input`: the launcher stops before any worker starts, with the bad-command-line
/// exit code.
#[derive(Debug)]
pub(crate) struct BadInput(pub(crate) String);

impl fmt::Display for BadInput {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for BadInput {}

fn bad(spec: &str, why: impl fmt::Display) -> BadInput {
    BadInput(format!("--input {spec}: {why}"))
}

/// One input file as listed at launch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct InputFile {
    pub(crate) path: String,
    pub(crate) size: u64,
}

/// The files of `specs`, in the order given (a directory's or a glob's files sorted by path),
/// each file once. Every spec must name at least one file.
pub(crate) fn list(specs: &[String], cwd: &Path) -> Result<Vec<InputFile>, BadInput> {
    let mut seen = HashSet::new();
    let mut files = Vec::new();
    for spec in specs {
        let found = match spec.strip_prefix('@') {
            Some(list) => expand_list(spec, list, cwd)?,
            None => expand(spec, cwd)?,
        };
        for path in found {
            if seen.insert(path.clone()) {
                files.push(describe(spec, path)?);
            }
        }
    }
    match files.is_empty() {
        true => Err(BadInput("--input: no files".into())),
        false => Ok(files),
    }
}

/// `@LIST`: a file with one path, directory or glob a line; blank lines and `#` comments
/// skipped.
fn expand_list(spec: &str, list: &str, cwd: &Path) -> Result<Vec<PathBuf>, BadInput> {
    let text = fs::read_to_string(absolute(cwd, list)).map_err(|e| bad(spec, e))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let found =
            expand(line, cwd).map_err(|e| BadInput(format!("{e} (line {} of {spec})", n + 1)))?;
        out.extend(found);
    }
    match out.is_empty() {
        true => Err(bad(spec, "lists no files")),
        false => Ok(out),
    }
}

/// A file, a directory's files, or a glob's files; never none.
fn expand(spec: &str, cwd: &Path) -> Result<Vec<PathBuf>, BadInput> {
    let path = absolute(cwd, spec);
    let found = match fs::metadata(&path) {
        Ok(m) if m.is_file() => vec![path],
        Ok(m) if m.is_dir() => {
            let mut files = Vec::new();
            walk(&path, &mut files).map_err(|e| bad(spec, e))?;
            files.sort();
            files
        }
        Ok(_) => return Err(bad(spec, "not a regular file or a directory")),
        // An existing name with glob characters is taken literally (tried first, above).
        Err(_) if spec.contains(['*', '?', '[']) => glob(spec, cwd)?,
        Err(e) => return Err(bad(spec, e)),
    };
    match found.is_empty() {
        true => Err(bad(spec, "no files")),
        false => Ok(found),
    }
}

/// The regular files under `dir`, recursively, hidden names skipped. Symbolic links to files
/// are files; symbolic links to directories are not followed (no cycles).
fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in fs::read_dir(dir).map_err(|e| at(dir, e))? {
        let entry = entry.map_err(|e| at(dir, e))?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") {
            continue;
        }
        let path = entry.path();
        let kind = entry.file_type().map_err(|e| at(&path, e))?;
        if kind.is_dir() {
            walk(&path, out)?;
        } else if kind.is_file() || (kind.is_symlink() && path.is_file()) {
            out.push(path);
        }
    }
    Ok(())
}

fn at(path: &Path, e: std::io::Error) -> std::io::Error {
    std::io::Error::new(e.kind(), format!("{}: {e}", path.display()))
}

/// The files a glob matches (`*`, `?`, `[...]`, `**`; a leading dot matched only literally); a
/// matched directory stands for its files.
fn glob(spec: &str, cwd: &Path) -> Result<Vec<PathBuf>, BadInput> {
    let pattern = match Path::new(spec).is_absolute() {
        true => spec.to_string(),
        false => format!("{}/{spec}", glob::Pattern::escape(&cwd.to_string_lossy())),
    };
    let options = glob::MatchOptions {
        case_sensitive: true,
        require_literal_separator: true,
        require_literal_leading_dot: true,
    };
    let mut out = Vec::new();
    for hit in glob::glob_with(&pattern, options).map_err(|e| bad(spec, e))? {
        let path = absolute(cwd, hit.map_err(|e| bad(spec, e))?);
        if path.is_dir() {
            let mut files = Vec::new();
            walk(&path, &mut files).map_err(|e| bad(spec, e))?;
            files.sort();
            out.extend(files);
        } else if path.is_file() {
            out.push(path);
        }
    }
    match out.is_empty() {
        true => Err(bad(spec, "matches no files")),
        false => Ok(out),
    }
}

/// `p` from `cwd`, with `.` and repeated separators dropped (`..` kept: lexical `..` is wrong
/// through symbolic links).
fn absolute(cwd: &Path, p: impl AsRef<Path>) -> PathBuf {
    cwd.join(p).components().collect()
}

/// `path` and its size, as text a worker can be handed.
fn describe(spec: &str, path: PathBuf) -> Result<InputFile, BadInput> {
    let size = fs::metadata(&path)
        .map_err(|e| bad(spec, at(&path, e)))?
        .len();
    let path = path
        .into_os_string()
        .into_string()
        .map_err(|p| bad(spec, format!("{}: not UTF-8", p.to_string_lossy())))?;
    if path.contains('\n') {
        return Err(bad(spec, format!("{path:?}: a newline in the name")));
    }
    Ok(InputFile { path, size })
}

/// Each of `world` ranks' files (indices into `sizes`, ascending): largest file first to the
/// least-loaded rank, ties to the lower file index and the lower rank. Deterministic; the
/// ranks' byte totals differ by at most the largest file (the most loaded rank was the least
/// loaded when it took its last file).
pub(crate) fn assign(sizes: &[u64], world: usize) -> Vec<Vec<usize>> {
    let mut order: Vec<usize> = (0..sizes.len()).collect();
    order.sort_by_key(|&i| (Reverse(sizes[i]), i));
    let mut load: BinaryHeap<Reverse<(u64, usize)>> = (0..world).map(|r| Reverse((0, r))).collect();
    let mut shares = vec![Vec::new(); world];
    for i in order {
        let Some(Reverse((bytes, r))) = load.pop() else {
            break;
        };
        shares[r].push(i);
        load.push(Reverse((bytes.saturating_add(sizes[i]), r)));
    }
    for s in &mut shares {
        s.sort_unstable();
    }
    shares
}

/// The workers' input variables: each launch rank's share and the manifest's path.
#[derive(Clone, Debug)]
pub(crate) struct Inputs {
    shares: Arc<Vec<Vec<String>>>,
    manifest: PathBuf,
    /// The manifest's directory when the launcher made one; removed when the last clone goes.
    _dir: Option<Arc<PrivateDir>>,
}

impl Inputs {
    /// Splits `files` over `world` launch ranks and writes the manifest: into `log_dir` if
    /// given, else into a private directory removed when the job ends.
    pub(crate) fn new(
        files: &[InputFile],
        world: usize,
        log_dir: Option<&Path>,
        run_id: &str,
    ) -> Result<Inputs> {
        let sizes: Vec<u64> = files.iter().map(|f| f.size).collect();
        let parts = assign(&sizes, world);
        let shares: Vec<Vec<String>> = parts
            .iter()
            .map(|s| s.iter().map(|&i| files[i].path.clone()).collect())
            .collect();
        check_fits(&shares)?;
        let (dir, owned) = match log_dir {
            Some(d) => {
                fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
                // Absolute: a worker may change directory before it reads the manifest.
                (std::path::absolute(d)?, None)
            }
            None => {
                let owned = PrivateDir::create(run_id)?;
                (owned.0.clone(), Some(Arc::new(owned)))
            }
        };
        let manifest = write_manifest(&dir, files)
            .with_context(|| format!("writing the input manifest in {}", dir.display()))?;
        let total: u64 = sizes.iter().sum();
        let loads: Vec<u64> = parts
            .iter()
            .map(|s| s.iter().map(|&i| sizes[i]).sum())
            .collect();
        eprintln!(
            "ringrun: --input: {} file(s), {total} bytes, over {world} launch rank(s) ({} to {} \
             bytes each); manifest {}",
            files.len(),
            loads.iter().min().unwrap_or(&0),
            loads.iter().max().unwrap_or(&0),
            manifest.display()
        );
        Ok(Inputs {
            shares: Arc::new(shares),
            manifest,
            _dir: owned,
        })
    }

    /// `INPUT_FILE_LIST` (comma-separated), `RINGRUN_INPUT_FILES` (a path a line) and
    /// `RINGRUN_INPUT_MANIFEST`. A rank outside the launch-time world (a worker added later)
    /// gets empty lists: its data come through the manifest.
    pub(crate) fn vars(&self, rank: usize) -> Vec<(String, String)> {
        let share = self.shares.get(rank).map_or(&[][..], Vec::as_slice);
        vec![
            ("INPUT_FILE_LIST".into(), share.join(",")),
            ("RINGRUN_INPUT_FILES".into(), share.join("\n")),
            (
                "RINGRUN_INPUT_MANIFEST".into(),
                self.manifest.display().to_string(),
            ),
        ]
    }
}

/// Refuses shares too long for one environment variable, rather than failing every spawn.
fn check_fits(shares: &[Vec<String>]) -> Result<(), BadInput> {
    for (rank, s) in shares.iter().enumerate() {
        let bytes = "RINGRUN_INPUT_FILES=".len() + s.iter().map(|p| p.len() + 1).sum::<usize>();
        if bytes > MAX_VAR_BYTES {
            return Err(BadInput(format!(
                "--input: launch rank {rank}'s {} files take {bytes} bytes of paths, more than \
                 the {MAX_VAR_BYTES} one environment variable may hold; use fewer, larger files \
                 or more workers",
                s.len()
            )));
        }
    }
    Ok(())
}

/// `SIZE<TAB>PATH` a line, in listing order; mode 0600, replaced whole.
fn write_manifest(dir: &Path, files: &[InputFile]) -> std::io::Result<PathBuf> {
    let path = dir.join(MANIFEST);
    let tmp = dir.join(format!(".{MANIFEST}.{}", std::process::id()));
    let _ = fs::remove_file(&tmp);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)?;
    let mut text = String::new();
    for file in files {
        text += &format!("{}\t{}\n", file.size, file.path);
    }
    f.write_all(text.as_bytes())?;
    fs::rename(&tmp, &path)?;
    Ok(path)
}

/// A directory only this user can enter, removed on drop.
#[derive(Debug)]
struct PrivateDir(PathBuf);

impl PrivateDir {
    fn create(run_id: &str) -> Result<PrivateDir> {
        let id: String = run_id
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect();
        let path = std::env::temp_dir().join(format!("ringrun-input-{id}-{}", std::process::id()));
        // `create`, not `create_all`: a directory already there (someone else's) is refused.
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(PrivateDir(path))
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

#[cfg(test)]
mod tests;
