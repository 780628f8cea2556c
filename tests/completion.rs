//! A job whose workers finished is finished: a worker killed while its peers finish the job is
//! not trained again from step 0, whether its restart comes before or after they leave, and on
//! whichever host it runs; a worker started on a completed job's checkpoints gets the final
//! state. Two launchers on loopback stand for two hosts. Bounded in time.

mod common;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use common::{
    job::{EXE, reference},
    launched::{output_within, read_lines, text, wait_for_exit},
    ports::free_udp_port,
};

const SECRET: &str = "completion-test-secret-0123456789";

/// The worker command: `train-worker`, except that both workers of the second launcher crash
/// in their first life at the commit of step `crash_step`, and wait `late_ms` before starting
/// in the next (so that a restart starts after the others finished).
fn worker_script(steps: u64, crash_step: u64, late_ms: u64) -> String {
    format!(
        r#"if [ "$GROUP_RANK" = 1 ]; then
             if [ "$TORCHELASTIC_RESTART_COUNT" = 0 ]; then export RINGRUN_CRASH_AT=commit:{crash_step};
             else sleep {late}; fi
           fi
           exec {EXE} train-worker --steps {steps} --step-ms 10"#,
        late = late_ms as f64 / 1000.0
    )
}

fn launcher(node_rank: usize, port: u16, seed: Option<u16>, script: &str) -> Command {
    let mut c = Command::new(EXE);
    c.args(["launch", "--np", "2", "--nnodes", "2", "--min-np", "1"])
        .args(["--node-rank", &node_rank.to_string()])
        .args(["--port", &port.to_string(), "--run-id", "completion"])
        .args(["--max-restarts", "4"]);
    if let Some(s) = seed {
        c.args(["--seeds", &format!("127.0.0.1:{s}")]);
    }
    c.args(["--", "sh", "-c", script])
        .env("RINGRUN_SECRET", SECRET)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

/// Both workers of one "host" die three steps before the end; the other host's workers finish
/// the job before the restarts are due. The failed workers' launcher hears that the job
/// completed and does not restart them. Before, each was restarted and trained the whole job
/// again from step 0, alone.
#[test]
fn workers_killed_just_before_the_end_are_not_restarted() {
    late_kill(40, 3);
}

/// As above, thirty steps before the end: the restarts are under way when the job completes,
/// and the restarted workers start after the others left. They learn that the job completed
/// (from their launcher, which passes the completion on to workers that join later) and exit
/// at once.
#[test]
fn workers_restarted_after_the_others_left_learn_the_job_completed() {
    late_kill(60, 30);
}

/// The second launcher's workers crash `before_end` steps before the end of `steps`; each of
/// them is either not restarted or, restarted, told at once that the job completed.
fn late_kill(steps: u64, before_end: u64) {
    let expected = reference(steps);
    let (pa, pb) = (free_udp_port(), free_udp_port());
    let script = worker_script(steps, steps - before_end, 1000);
    let start = Instant::now();
    let mut a = launcher(0, pa, None, &script).spawn().unwrap();
    let mut b = launcher(1, pb, Some(pa), &script).spawn().unwrap();
    let (a_out, b_out) = (read_lines(&mut a), read_lines(&mut b));
    let b_err = std::thread::spawn({
        let mut err = b.stderr.take().unwrap();
        move || {
            let mut s = String::new();
            std::io::Read::read_to_string(&mut err, &mut s).unwrap();
            s
        }
    });
    let a_status = wait_for_exit(&mut a, start + Duration::from_secs(60));
    let b_status = wait_for_exit(&mut b, start + Duration::from_secs(60));
    let (a_out, b_out) = (a_out.lock().unwrap().clone(), b_out.lock().unwrap().clone());
    let b_err = b_err.join().unwrap();
    eprintln!("second launcher's log:\n{b_err}");
    assert!(a_status.success(), "{a_out:?}");
    for r in 0..2 {
        let fin = a_out
            .iter()
            .rev()
            .find(|l| l.starts_with(&format!("[{r}] final ")));
        assert_eq!(
            fin.map(|l| l.split_once(' ').unwrap().1),
            Some(expected.as_str()),
            "rank {r}: {a_out:?}"
        );
    }
    // Each of the second host's workers: not restarted, or restarted and told at once.
    for r in 2..4 {
        let tag = format!("[{r}] ");
        let told = b_out.iter().any(|l| {
            l.starts_with(&tag) && l.contains(&format!("completed at step {}", steps - 1))
        });
        let not_restarted = b_err.contains(&format!("worker {r} failed after the job completed"));
        assert!(told || not_restarted, "rank {r}: {b_out:?}\n{b_err}");
    }
    // Trained once: step 0 only in the first life, and no restore.
    let again = |what: &str| b_out.iter().filter(|l| l.contains(what)).count();
    assert_eq!(again("] step 0 "), 2, "{b_out:?}");
    assert_eq!(again("] restored"), 0, "{b_out:?}");
    assert!(b_err.contains("the job completed at step"), "{b_err}");
    // Its workers' last lives ended well (or were not restarted): the job failed only where a
    // worker was left down.
    let any_not_restarted = b_err.contains("not restarted");
    assert_eq!(b_status.success(), !any_not_restarted, "{b_err}");
    assert!(
        start.elapsed() < Duration::from_secs(30),
        "{:?}",
        start.elapsed()
    );
}

/// A job run again on the checkpoints of a job that finished resumes from its final state,
/// marked final: it trains nothing and prints the final model.
#[test]
fn a_job_started_on_a_finished_jobs_checkpoints_ends_with_the_final_state() {
    let steps = 20;
    let expected = reference(steps);
    let dir = std::env::temp_dir().join(format!("ringrun-completion-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let run = |np: &str| {
        output_within(
            Command::new(EXE)
                .args(["launch", "--np", np, "--checkpoint-dir"])
                .arg(&dir)
                .args(["--", EXE, "train-worker", "--steps", &steps.to_string()]),
            Duration::from_secs(60),
        )
    };
    let first = run("2");
    assert!(first.status.success(), "{}", text(&first.stderr));
    let again = run("1");
    let out = text(&again.stdout);
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(!out.contains("] step "), "it trained again: {out}");
    // The model's digest (the loss is not part of the committed state).
    let digest = |l: &str| l.split(' ').take(2).collect::<Vec<_>>().join(" ");
    assert!(
        out.lines().any(|l| l
            .strip_prefix("[0] ")
            .is_some_and(|l| digest(l) == digest(&expected))),
        "{expected}: {out}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
