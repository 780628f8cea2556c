use std::os::unix::fs::PermissionsExt;

use super::*;

/// A fresh directory under the temp dir, removed on drop.
struct Tmp(PathBuf);

impl Tmp {
    fn new(name: &str) -> Tmp {
        let p =
            std::env::temp_dir().join(format!("ringrun-input-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Tmp(p)
    }

    /// Writes `len` bytes at `rel`, creating its directories.
    fn file(&self, rel: &str, len: usize) -> String {
        let p = self.0.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(&p, vec![b'x'; len]).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for Tmp {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn specs(s: &[&str]) -> Vec<String> {
    s.iter().map(|x| x.to_string()).collect()
}

fn paths(files: &[InputFile]) -> Vec<&str> {
    files.iter().map(|f| f.path.as_str()).collect()
}

/// splitmix64: sizes that vary over several orders of magnitude.
fn sizes(seed: u64, n: usize) -> Vec<u64> {
    let mut x = seed;
    (0..n)
        .map(|_| {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            z % 10u64.pow(1 + (z % 7) as u32)
        })
        .collect()
}

#[test]
fn every_file_goes_to_exactly_one_rank_balanced_within_the_largest_file() {
    for seed in 0..40 {
        for world in 1..10 {
            let s = sizes(seed, (seed as usize * 7) % 61);
            let shares = assign(&s, world);
            assert_eq!(shares, assign(&s, world), "deterministic");
            assert_eq!(shares.len(), world);
            let mut all: Vec<usize> = shares.concat();
            all.sort_unstable();
            assert_eq!(all, (0..s.len()).collect::<Vec<_>>(), "each file once");
            for share in &shares {
                assert!(share.windows(2).all(|w| w[0] < w[1]), "listing order");
            }
            let loads: Vec<u64> = shares
                .iter()
                .map(|sh| sh.iter().map(|&i| s[i]).sum())
                .collect();
            let largest = s.iter().copied().max().unwrap_or(0);
            let (lo, hi) = (loads.iter().min().unwrap(), loads.iter().max().unwrap());
            assert!(hi - lo <= largest, "seed {seed} world {world}: {loads:?}");
        }
    }
}

#[test]
fn largest_file_first_to_the_least_loaded_rank_ties_to_the_lower_rank() {
    // 5→r0, 4→r1, 3→r1 (4<5), 2→r0 (5<7), 1→r0 (7=7: the lower rank).
    assert_eq!(assign(&[5, 1, 4, 2, 3], 2), vec![vec![0, 1, 3], vec![2, 4]]);
    // Equal sizes go round the ranks in listing order; a world larger than the files
    // leaves the last ranks empty.
    assert_eq!(assign(&[7; 5], 3), vec![vec![0, 3], vec![1, 4], vec![2]]);
    assert_eq!(assign(&[1, 2], 4), vec![vec![1], vec![0], vec![], vec![]]);
}

#[test]
fn directories_globs_and_lists_expand_to_sorted_absolute_unique_files() {
    let t = Tmp::new("expand");
    let a = t.file("d/a.bin", 3);
    let c = t.file("d/b/c.bin", 5);
    let z = t.file("d/z.txt", 1);
    t.file("d/.hidden", 9);
    t.file("d/.git/x.bin", 9);
    let cwd = &t.0;

    let dir = list(&specs(&["d"]), cwd).unwrap();
    assert_eq!(paths(&dir), [&a, &c, &z]);
    assert_eq!(dir.iter().map(|f| f.size).collect::<Vec<_>>(), [3, 5, 1]);

    let globbed = list(&specs(&["./d/*.bin", "d/**/*.bin", "d/?.txt"]), cwd).unwrap();
    assert_eq!(paths(&globbed), [&a, &c, &z], "given order, each file once");

    fs::write(
        cwd.join("list"),
        format!("# inputs\n\n  d/z.txt  \n{a}\nd/b\nd/[a-c].bin\n"),
    )
    .unwrap();
    let listed = list(&specs(&["@list", "d"]), cwd).unwrap();
    assert_eq!(paths(&listed), [&z, &a, &c]);
}

#[test]
fn missing_empty_or_unreadable_inputs_are_refused() {
    let t = Tmp::new("refuse");
    t.file("d/a.bin", 3);
    fs::create_dir_all(t.0.join("empty/.only-hidden")).unwrap();
    fs::write(t.0.join("comments"), "# nothing\n\n").unwrap();
    fs::write(t.0.join("badline"), "d/a.bin\nnope\n").unwrap();
    let cwd = &t.0;
    let err = |s: &[&str]| list(&specs(s), cwd).unwrap_err().0;
    assert!(
        err(&["d", "nope"]).starts_with("--input nope: "),
        "{}",
        err(&["nope"])
    );
    assert!(err(&["empty"]).contains("no files"));
    assert!(err(&["d/*.txt"]).contains("matches no files"));
    assert!(err(&["@missing"]).starts_with("--input @missing: "));
    assert!(err(&["@comments"]).contains("lists no files"));
    let e = err(&["@badline"]);
    assert!(
        e.starts_with("--input nope: ") && e.ends_with(" (line 2 of @badline)"),
        "{e}"
    );
    assert_eq!(err(&[]), "--input: no files");
    t.file("d/new\nline", 1);
    assert!(err(&["d"]).contains("a newline in the name"));
}

#[test]
fn the_manifest_lists_every_file_and_ranks_outside_the_world_get_empty_lists() {
    let t = Tmp::new("manifest");
    let files: Vec<InputFile> = (0..5)
        .map(|i| InputFile {
            path: t.file(&format!("f{i}"), 10 * i + 1),
            size: 10 * i as u64 + 1,
        })
        .collect();
    let logs = t.0.join("logs");
    let inputs = Inputs::new(&files, 2, Some(&logs), "r").unwrap();
    let manifest = logs.join(MANIFEST);
    let want: String = files
        .iter()
        .map(|f| format!("{}\t{}\n", f.size, f.path))
        .collect();
    assert_eq!(fs::read_to_string(&manifest).unwrap(), want);
    let mode = fs::metadata(&manifest).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);

    let var = |rank: usize, name: &str| {
        let v = inputs.vars(rank);
        v.into_iter().find(|(k, _)| k == name).unwrap().1
    };
    let share = assign(&files.iter().map(|f| f.size).collect::<Vec<_>>(), 2);
    for (rank, idx) in share.iter().enumerate() {
        let mine: Vec<&str> = idx.iter().map(|&i| files[i].path.as_str()).collect();
        assert_eq!(var(rank, "INPUT_FILE_LIST"), mine.join(","));
        assert_eq!(var(rank, "RINGRUN_INPUT_FILES"), mine.join("\n"));
        assert_eq!(
            var(rank, "RINGRUN_INPUT_MANIFEST"),
            manifest.to_str().unwrap()
        );
    }
    assert_eq!(var(2, "INPUT_FILE_LIST"), "");
    assert_eq!(var(70_000, "RINGRUN_INPUT_FILES"), "");
    assert_eq!(
        var(70_000, "RINGRUN_INPUT_MANIFEST"),
        manifest.to_str().unwrap()
    );
}

#[test]
fn without_a_log_dir_the_manifest_lives_in_a_private_directory_removed_with_the_job() {
    let t = Tmp::new("private");
    let files = vec![InputFile {
        path: t.file("f", 4),
        size: 4,
    }];
    let inputs = Inputs::new(&files, 1, None, "run/1").unwrap();
    let manifest = PathBuf::from(&inputs.vars(0)[2].1);
    let dir = manifest.parent().unwrap().to_path_buf();
    assert_eq!(
        fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
        0o700
    );
    assert_eq!(
        fs::read_to_string(&manifest).unwrap(),
        format!("4\t{}\n", files[0].path)
    );
    let clone = inputs.clone();
    drop(inputs);
    assert!(manifest.exists(), "a clone still holds it");
    drop(clone);
    assert!(!dir.exists());
}

#[test]
fn a_share_too_long_for_one_variable_is_refused() {
    let path = "/data/".to_string() + &"p".repeat(200);
    let files: Vec<InputFile> = (0..1000)
        .map(|i| InputFile {
            path: format!("{path}{i}"),
            size: 1,
        })
        .collect();
    let t = Tmp::new("toolong");
    let e = Inputs::new(&files, 1, Some(&t.0), "r").unwrap_err();
    assert!(e.is::<BadInput>(), "{e:#}");
    assert!(
        Inputs::new(&files, 4, Some(&t.0), "r").is_ok(),
        "fits over 4 ranks"
    );
}
