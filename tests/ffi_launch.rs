//! The C example (`ffi/examples/train.c`) as a user runs it: compiled with the system C compiler
//! against `libringrun.so`, started by `ringrun launch --np 4`, one worker SIGKILLed mid-run.
//! The survivors go on, the launcher restarts the killed worker, it rejoins, and every worker
//! ends with the fault-free model. Bounded in time.
//!
//! The library comes from the same `cargo test --workspace` build (the `ringrun-ffi` cdylib);
//! when only this package was built the test skips with a message, except under CI, where a
//! missing library is a failure.

mod common;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use common::launched::{read_lines, wait_for_exit, worker_pid};

const EXE: &str = env!("CARGO_BIN_EXE_ringrun");
const STEPS: u64 = 150;

/// The newest `libringrun.so` in this build's target directory.
fn library() -> Option<PathBuf> {
    let dir = Path::new(EXE).parent()?;
    [dir.join("libringrun.so"), dir.join("deps/libringrun.so")]
        .into_iter()
        .filter_map(|p| Some((p.metadata().ok()?.modified().ok()?, p)))
        .max()
        .map(|(_, p)| p)
}

fn skip(reason: &str) {
    assert!(std::env::var_os("CI").is_none(), "under CI: {reason}");
    eprintln!("SKIPPED: {reason}");
}

/// Compiles the example; `None` (after saying why) when there is no compiler or library.
fn compile() -> Option<PathBuf> {
    if Command::new("cc").arg("--version").output().is_err() {
        skip("no C compiler (`cc`) on PATH");
        return None;
    }
    let Some(lib) = library() else {
        skip("libringrun.so is not built (`cargo test --workspace` builds it)");
        return None;
    };
    let ffi = Path::new(env!("CARGO_MANIFEST_DIR")).join("../ffi");
    let out = std::env::temp_dir().join(format!("ringrun-launch-c-{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-std=c11", "-O1", "-D_DEFAULT_SOURCE", "-I"])
        .arg(ffi.join("include"))
        .arg(ffi.join("examples/train.c"))
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.parent().unwrap().display()))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("run cc");
    assert!(status.success(), "cc failed on examples/train.c");
    Some(out)
}

#[test]
fn the_c_example_under_launch_survives_a_sigkill_and_the_restart_rejoins() {
    let Some(exe) = compile() else { return };
    let reference = Command::new(&exe)
        .args(["--reference", &STEPS.to_string()])
        .output()
        .unwrap();
    let expected = String::from_utf8(reference.stdout)
        .unwrap()
        .trim()
        .to_string();

    let mut job = Command::new(EXE)
        .args([
            "launch",
            "--np",
            "4",
            "--max-restarts",
            "2",
            "--run-id",
            "ffi-launch",
        ])
        .arg("--")
        .arg(&exe)
        .args([&STEPS.to_string(), "10"])
        .env("RINGRUN_SECRET", "ffi-launch-test-secret-0123456789")
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let lines = read_lines(&mut job);
    let deadline = Instant::now() + Duration::from_secs(90);
    let seen = |prefix: &str| lines.lock().unwrap().iter().any(|l| l.starts_with(prefix));
    while !seen("[2] step 40 ") {
        assert!(Instant::now() < deadline, "worker 2 never reached step 40");
        thread::sleep(Duration::from_millis(5));
    }
    let victim = worker_pid(job.id(), "RINGRUN_NODE_ID=2").expect("worker 2's pid");
    assert!(
        Command::new("kill")
            .args(["-KILL", &victim.to_string()])
            .status()
            .unwrap()
            .success()
    );

    let status = wait_for_exit(&mut job, deadline);
    let _ = std::fs::remove_file(&exe);
    assert!(status.success(), "ringrun launch exited with {status}");
    let lines = lines.lock().unwrap();
    for rank in 0..4 {
        let last = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("[{rank}] ")))
            .rfind(|l| l.starts_with("final "));
        assert_eq!(last, Some(expected.as_str()), "worker {rank}'s final model");
    }
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("[0] step ") && l.contains(" size 3 ")),
        "the survivors never stepped with 3 members"
    );
    let restarted_steps = lines
        .iter()
        .skip_while(|l| !l.starts_with("[2] step 40 "))
        .filter(|l| l.starts_with("[2] step ") && l.contains(" size 4 "))
        .count();
    assert!(
        restarted_steps > 0,
        "the restarted worker never rejoined a group of 4"
    );
}
