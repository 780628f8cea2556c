//! `ringrun launch --input`: every worker's share of the input files in its environment, the
//! shares covering every file once and balanced by bytes, the manifest of the whole list, and
//! bad inputs refused before any worker starts. Every test is bounded in time.

mod common;

use common::launched::text;

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");

/// Each worker writes its input variables to `$OUT/<var>.<rank>[.<restart>]`.
const DUMP: &str = r#"r=$RANK.$TORCHELASTIC_RESTART_COUNT
printf '%s' "$INPUT_FILE_LIST" > "$OUT/list.$r"
printf '%s' "$RINGRUN_INPUT_FILES" > "$OUT/files.$r"
printf '%s' "$RINGRUN_INPUT_MANIFEST" > "$OUT/manifest.$r"
cp "$RINGRUN_INPUT_MANIFEST" "$OUT/copy.$r""#;

/// A fresh directory, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p = std::env::temp_dir().join(format!(
            "ringrun-launch-input-{name}-{}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(p.join("out")).unwrap();
        Tmp(p)
    }

    fn out(&self) -> PathBuf {
        self.0.join("out")
    }

    fn file(&self, rel: &str, len: usize) {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, vec![b'x'; len]).unwrap();
    }

    fn read(&self, name: &str) -> String {
        fs::read_to_string(self.out().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn launch(t: &Tmp, args: &[&str], script: &str, within: Duration) -> Output {
    common::launched::output_within(
        Command::new(EXE)
            .current_dir(&t.0)
            .env("OUT", t.out())
            .arg("launch")
            .args(args)
            .args(["--", "sh", "-c", script]),
        within,
    )
}

/// `SIZE<TAB>PATH` lines.
fn parse_manifest(text: &str) -> Vec<(u64, String)> {
    text.lines()
        .map(|l| {
            let (size, path) = l.split_once('\t').unwrap_or_else(|| panic!("{l:?}"));
            (size.parse().unwrap(), path.to_string())
        })
        .collect()
}

#[test]
fn three_workers_share_every_file_once_balanced_by_bytes_and_a_restart_keeps_its_share() {
    let t = Tmp::new("share");
    let sizes = [900, 10, 350, 700, 0, 125, 480, 64, 1000, 333, 2];
    for (i, s) in sizes.iter().enumerate() {
        t.file(&format!("data/part-{i:02}"), *s);
    }
    t.file("data/sub/nested", 77);
    t.file("data/.hidden", 5000);
    // Worker 1 fails once, after dumping its first share: its restart must get the same one.
    // The others wait (up to 10 s) for the restart: once a worker has finished the job, a
    // failed one is not restarted.
    let script = format!(
        "{DUMP}\nif [ \"$RANK\" = 1 ] && [ \"$TORCHELASTIC_RESTART_COUNT\" = 0 ]; then exit 3; fi\n\
         i=0; while [ ! -e \"$OUT/list.1.1\" ] && [ $i -lt 200 ]; do sleep 0.05; i=$((i+1)); done"
    );
    let out = launch(
        &t,
        &[
            "--nproc-per-node",
            "3",
            "--max-restarts",
            "1",
            "--input",
            "data",
        ],
        &script,
        Duration::from_secs(20),
    );
    let stderr = text(&out.stderr);
    assert!(out.status.success(), "{stderr}");

    let data = t.0.join("data");
    let mut want: Vec<(u64, String)> = fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_file() && !p.ends_with(".hidden"))
        .chain([data.join("sub/nested")])
        .map(|p| {
            (
                fs::metadata(&p).unwrap().len(),
                p.to_str().unwrap().to_string(),
            )
        })
        .collect();
    want.sort_by(|a, b| a.1.cmp(&b.1));
    let manifest = parse_manifest(&t.read("copy.0.0"));
    assert_eq!(
        manifest, want,
        "the manifest: every file with its size, sorted by path"
    );

    let mut seen = BTreeMap::new();
    let mut loads = Vec::new();
    for rank in 0..3 {
        // Worker 1's restart (restart count 1) wrote the share it kept.
        let r = match rank {
            1 => "1.1".to_string(),
            _ => format!("{rank}.0"),
        };
        let list = t.read(&format!("list.{r}"));
        let share: Vec<&str> = list.split(',').filter(|p| !p.is_empty()).collect();
        assert_eq!(t.read(&format!("files.{r}")), share.join("\n"));
        assert_eq!(t.read(&format!("manifest.{r}")), t.read("manifest.0.0"));
        let order: Vec<usize> = share
            .iter()
            .map(|p| want.iter().position(|w| w.1 == *p).unwrap())
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "listing order: {share:?}"
        );
        for p in &share {
            *seen.entry(p.to_string()).or_insert(0) += 1;
        }
        loads.push(order.iter().map(|&i| want[i].0).sum::<u64>());
    }
    assert_eq!(
        t.read("list.1.0"),
        t.read("list.1.1"),
        "a restart keeps its share"
    );
    assert_eq!(seen.len(), want.len(), "every file in some share");
    assert!(seen.values().all(|&n| n == 1), "each file once: {seen:?}");
    let largest = want.iter().map(|w| w.0).max().unwrap();
    let (lo, hi) = (*loads.iter().min().unwrap(), *loads.iter().max().unwrap());
    assert!(hi - lo <= largest, "balanced by bytes: {loads:?}");
    assert!(
        !Path::new(&t.read("manifest.0.0")).exists(),
        "without --log-dir the manifest goes with the launcher"
    );
}

#[test]
fn lists_and_globs_with_a_log_dir_keep_a_private_manifest_there() {
    let t = Tmp::new("list");
    t.file("a/one.rec", 10);
    t.file("a/two.rec", 20);
    t.file("a/skip.txt", 30);
    t.file("b/three.rec", 40);
    fs::write(
        t.0.join("inputs"),
        "# the records\n\nb/three.rec\na/*.rec\n",
    )
    .unwrap();
    let out = launch(
        &t,
        &[
            "--np",
            "1",
            "--log-dir",
            "logs",
            "--input",
            "@inputs",
            "--input",
            "a/one.rec",
        ],
        DUMP,
        Duration::from_secs(20),
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = |rel: &str| t.0.join(rel).to_str().unwrap().to_string();
    let manifest = t.0.join("logs/input-manifest.tsv");
    assert_eq!(t.read("manifest.0.0"), manifest.to_str().unwrap());
    assert_eq!(
        fs::read_to_string(&manifest).unwrap(),
        format!(
            "40\t{}\n10\t{}\n20\t{}\n",
            path("b/three.rec"),
            path("a/one.rec"),
            path("a/two.rec")
        ),
        "listing order, each file once"
    );
    assert_eq!(
        fs::metadata(&manifest).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        t.read("list.0.0"),
        [path("b/three.rec"), path("a/one.rec"), path("a/two.rec")].join(",")
    );
}

#[test]
fn a_missing_path_an_empty_directory_or_a_glob_matching_nothing_fails_before_any_worker() {
    let t = Tmp::new("bad");
    t.file("data/f", 1);
    fs::create_dir_all(t.0.join("empty")).unwrap();
    let cases: [&[&str]; 3] = [
        &["--input", "data", "--input", "missing"],
        &["--input", "empty"],
        &["--input", "data/*.none"],
    ];
    for args in cases {
        let args: Vec<&str> = ["--np", "2"].iter().chain(args).copied().collect();
        let out = launch(
            &t,
            &args,
            "touch \"$OUT/started.$RANK\"",
            Duration::from_secs(10),
        );
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(
            stderr.contains("ringrun launch: error: --input "),
            "{stderr}"
        );
        let started = fs::read_dir(t.out()).unwrap().count();
        assert_eq!(started, 0, "{args:?}: no worker may start");
    }
}
