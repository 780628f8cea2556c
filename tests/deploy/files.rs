//! Just enough reading of the repository's Dockerfile, .dockerignore, TOML files and README for
//! tests/deploy.rs to check that they agree. No image can be built where the tests run, so
//! these are read as text, by the rules Docker and Cargo apply to them.

use std::path::Path;

pub(crate) const ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

pub(crate) fn read(rel: &str) -> String {
    let path = format!("{ROOT}/{rel}");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
}

pub(crate) fn exists(rel: &str) -> bool {
    Path::new(ROOT).join(rel).exists()
}

/// One Dockerfile instruction: its keyword (upper case) and its arguments, with continuation
/// lines joined.
#[derive(Debug)]
pub(crate) struct Instr {
    pub(crate) op: String,
    pub(crate) args: String,
}

/// A build stage: the image it starts from, its `AS` name, and its instructions after `FROM`.
#[derive(Debug)]
pub(crate) struct Stage {
    pub(crate) from: String,
    pub(crate) name: Option<String>,
    pub(crate) instrs: Vec<Instr>,
}

impl Stage {
    pub(crate) fn all<'a>(&'a self, op: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.instrs
            .iter()
            .filter(move |i| i.op == op)
            .map(|i| i.args.as_str())
    }

    /// The last WORKDIR (every one the stages here set is absolute).
    pub(crate) fn workdir(&self) -> String {
        let dir = self.all("WORKDIR").last().expect("a WORKDIR").to_string();
        assert!(dir.starts_with('/'), "WORKDIR {dir} is not absolute");
        dir
    }

    /// The shell commands of its RUN instructions, split at `&&`, as words.
    pub(crate) fn commands(&self) -> Vec<Vec<String>> {
        self.all("RUN")
            .flat_map(|r| r.split("&&"))
            .map(|c| c.split_whitespace().map(str::to_string).collect())
            .collect()
    }

    /// `COPY [--from=STAGE] SRC DST` pairs; `from` is None for the build context.
    pub(crate) fn copies(&self) -> Vec<(Option<String>, String, String)> {
        self.all("COPY")
            .map(|args| {
                let mut words: Vec<&str> = args.split_whitespace().collect();
                let from = words
                    .first()
                    .and_then(|w| w.strip_prefix("--from="))
                    .map(str::to_string);
                if from.is_some() {
                    words.remove(0);
                }
                assert_eq!(words.len(), 2, "COPY {args}: one source, one destination");
                (from, words[0].to_string(), words[1].to_string())
            })
            .collect()
    }
}

/// `path` as an absolute path in a stage whose working directory is `dir`.
pub(crate) fn absolute(dir: &str, path: &str) -> String {
    if path.starts_with('/') {
        path.to_string()
    } else {
        format!("{}/{path}", dir.trim_end_matches('/'))
    }
}

pub(crate) fn dockerfile_stages(text: &str) -> Vec<Stage> {
    let mut logical = Vec::new();
    let mut cur = String::new();
    for line in text.lines() {
        let line = line.trim();
        if cur.is_empty() && (line.is_empty() || line.starts_with('#')) {
            continue;
        }
        match line.strip_suffix('\\') {
            Some(head) => cur.push_str(head),
            None => {
                cur.push_str(line);
                logical.push(std::mem::take(&mut cur));
            }
        }
    }
    let mut stages: Vec<Stage> = Vec::new();
    for l in logical {
        let (op, args) = l
            .split_once(char::is_whitespace)
            .expect("instruction arguments");
        let (op, args) = (op.to_ascii_uppercase(), args.trim().to_string());
        if op == "FROM" {
            let words: Vec<&str> = args.split_whitespace().collect();
            let name = match words.as_slice() {
                [_, kw, name] if kw.eq_ignore_ascii_case("as") => Some(name.to_string()),
                [_] => None,
                _ => panic!("FROM {args}"),
            };
            stages.push(Stage {
                from: words[0].to_string(),
                name,
                instrs: Vec::new(),
            });
        } else {
            let stage = stages.last_mut().expect("FROM first");
            stage.instrs.push(Instr { op, args });
        }
    }
    stages
}

/// A string value from a TOML file, by section header (`[lib]`, `[[bin]]`) and key: the files
/// read here keep one value per line.
pub(crate) fn toml_str(text: &str, section: &str, key: &str) -> Option<String> {
    let mut inside = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = line == section;
            continue;
        }
        match line.split_once('=') {
            Some((k, v)) if inside && k.trim() == key => {
                return Some(v.trim().trim_matches('"').to_string());
            }
            _ => {}
        }
    }
    None
}

/// Whether .dockerignore leaves `rel` (or a folder above it) out of the build context.
pub(crate) fn ignored(patterns: &[String], rel: &str) -> bool {
    let parts: Vec<&str> = rel.split('/').collect();
    patterns.iter().any(|p| {
        let pat: Vec<&str> = p.trim_matches('/').split('/').collect();
        (1..=parts.len()).any(|n| path_match(&pat, &parts[..n]))
    })
}

pub(crate) fn dockerignore() -> Vec<String> {
    let patterns: Vec<String> = read(".dockerignore")
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect();
    assert!(
        patterns.iter().all(|p| !p.starts_with('!')),
        "exceptions (!) are not read here"
    );
    patterns
}

fn path_match(pat: &[&str], path: &[&str]) -> bool {
    match (pat.first(), path.first()) {
        (None, None) => true,
        (Some(&"**"), _) => {
            path_match(&pat[1..], path) || (!path.is_empty() && path_match(pat, &path[1..]))
        }
        (Some(p), Some(s)) => glob(p.as_bytes(), s.as_bytes()) && path_match(&pat[1..], &path[1..]),
        _ => false,
    }
}

/// `*` and `?` within one path component.
fn glob(p: &[u8], s: &[u8]) -> bool {
    match (p.first(), s.first()) {
        (None, None) => true,
        (Some(b'*'), _) => glob(&p[1..], s) || (!s.is_empty() && glob(p, &s[1..])),
        (Some(b'?'), Some(_)) => glob(&p[1..], &s[1..]),
        (Some(a), Some(b)) => a == b && glob(&p[1..], &s[1..]),
        _ => false,
    }
}

/// The `pip ...` command lines of README's "From C and Python" section, comments dropped.
pub(crate) fn readme_pip_commands() -> Vec<Vec<String>> {
    let readme = read("README.md");
    let start = readme
        .find("## From C and Python")
        .expect("README: From C and Python");
    let section = &readme[start..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |e| e + 3)];
    section
        .lines()
        .map(|l| l.split('#').next().unwrap().trim())
        .filter(|l| l.starts_with("pip "))
        .map(|l| l.split_whitespace().map(str::to_string).collect())
        .collect()
}
