//! `ringrun train-worker` (hidden): the small deterministic trainer the elastic tests and the
//! demo run under faults. It joins the group from the `RINGRUN_*` environment, trains
//! [`model::Problem`] with a commit after every step, survives membership changes by restoring
//! the last commit, and prints one line per step, one per fault and a final digest of the
//! model, which must equal `ringrun train-worker --reference`'s.

pub(crate) mod model;

use std::{process::ExitCode, time::Duration};

use anyhow::{Context, Result, bail};
use clap::Args;
use ring::digest::{SHA256, digest};
use ringrun_collectives::ReduceOp;
use ringrun_runtime::{FaultEvent, Group, GroupConfig, GroupError};

use model::Problem;

/// Options of `ringrun train-worker`.
#[derive(Args, Debug)]
pub(crate) struct TrainArgs {
    /// Steps to train.
    #[arg(long, default_value_t = 100)]
    steps: u64,
    /// Pause after each step, in milliseconds (stands in for computation).
    #[arg(long, default_value_t = 0)]
    step_ms: u64,
    /// Print the fault-free result computed in this process and exit.
    #[arg(long)]
    reference: bool,
}

pub(crate) fn main(args: TrainArgs) -> Result<ExitCode> {
    let p = Problem::default();
    if args.reference {
        let (w, losses) = p.reference(args.steps);
        println!(
            "final {} loss {:.6}",
            model_digest(&w),
            losses.last().copied().unwrap_or(0.0)
        );
        return Ok(ExitCode::SUCCESS);
    }
    // SIGTERM/SIGINT: finish the step, leave gracefully (the others see Left, not Down).
    let signals = crate::launch::watch::signals()?;
    let config = GroupConfig::from_env()?;
    let joined = Group::join(config).and_then(|mut g| g.restore().map(|r| (g, r)));
    let (mut group, restored) = match joined {
        Err(GroupError::Completed { step }) => return Ok(completed_without_us(step)),
        joined => joined.context("joining the group")?,
    };
    let (mut next, mut w) = resume(&p, restored)?;
    let mut loss = f64::NAN;
    let mut reported = 0;
    // Train, then finish (which every rank calls after its last commit); a membership change
    // in either restores the last commit and goes on from there.
    while group.completed().is_none() {
        if signals.load(std::sync::atomic::Ordering::SeqCst) != 0 {
            println!("leaving at step {next} on a signal");
            group.leave();
            return Ok(ExitCode::SUCCESS);
        }
        let stepped = match next < args.steps {
            true => train_step(&p, &mut group, &w, next).map(Some),
            false => group.finish().map(|()| None),
        };
        match stepped {
            Ok(Some((w2, l))) => (w, loss, next) = (w2, l, next + 1),
            Ok(None) => {}
            Err(e) => match recover(&p, &mut group, e)? {
                Some(resumed) => (next, w) = resumed,
                None => return Ok(ExitCode::SUCCESS),
            },
        }
        for f in &group.faults()[reported..] {
            println!("fault {}", fault_json(f));
        }
        reported = group.faults().len();
        if next < args.steps {
            std::thread::sleep(Duration::from_millis(args.step_ms));
        }
    }
    println!("final {} loss {loss:.6}", model_digest(&w));
    group.leave();
    Ok(ExitCode::SUCCESS)
}

/// One step: gradients, allreduce, update, commit; prints the step's line.
fn train_step(
    p: &Problem,
    g: &mut Group,
    w: &[f64],
    step: u64,
) -> Result<(Vec<f64>, f64), GroupError> {
    g.set_step(step);
    let mut buf = p.local_gradients(w, step, g.rank(), g.size());
    g.allreduce(&mut buf, ReduceOp::Sum)?;
    let mut w2 = w.to_vec();
    let loss = p.apply(&mut w2, &buf);
    g.commit(step, model::encode(step, &w2))?;
    println!(
        "step {step} loss {loss:.6} size {} epoch {} links {}",
        g.size(),
        g.epoch(),
        g.links().unwrap_or("none")
    );
    Ok((w2, loss))
}

/// The job completed without this worker and no final state reached it: nothing to train.
fn completed_without_us(step: u64) -> ExitCode {
    println!("the job completed at step {step} without this worker; exiting");
    ExitCode::SUCCESS
}

/// After a failed step: wait for the next epoch and resume from the last commit (`None`: the
/// job completed without this worker).
fn recover(p: &Problem, g: &mut Group, e: GroupError) -> Result<Option<(u64, Vec<f64>)>> {
    if let GroupError::Completed { step } = e {
        completed_without_us(step);
        return Ok(None);
    }
    if !matches!(
        e,
        GroupError::MembershipChanged { .. } | GroupError::Timeout(_)
    ) {
        bail!("step failed: {e}");
    }
    eprintln!("membership changed ({e}); restoring");
    let restored = match g.restore() {
        Err(GroupError::Completed { step }) => {
            completed_without_us(step);
            return Ok(None);
        }
        r => r.context("restoring after a membership change")?,
    };
    let (next, w) = resume(p, restored)?;
    println!(
        "restored to step {next} size {} epoch {}",
        g.size(),
        g.epoch()
    );
    Ok(Some((next, w)))
}

fn resume(
    p: &Problem,
    restored: Option<(u64, std::sync::Arc<Vec<u8>>)>,
) -> Result<(u64, Vec<f64>)> {
    match restored {
        None => Ok((0, vec![0.0; p.dim])),
        Some((_, bytes)) => {
            let (step, w) =
                model::decode(&bytes, p.dim).context("restored state has the wrong shape")?;
            Ok((step + 1, w))
        }
    }
}

pub(crate) fn model_digest(w: &[f64]) -> String {
    let bytes: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    digest(&SHA256, &bytes).as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn fault_json(f: &FaultEvent) -> String {
    let ms =
        |d: Option<Duration>| d.map_or(serde_json::Value::Null, |d| (d.as_secs_f64() * 1e3).into());
    serde_json::json!({
        "from_epoch": f.from_epoch,
        "to_epoch": f.to_epoch,
        "size_before": f.size_before,
        "size_after": f.size_after,
        "reason": f.reason,
        "detected_unix_ms": f.detected_unix_ms,
        "epoch_ms": ms(f.to_installed),
        "restore_ms": ms(f.to_restored),
        "resume_ms": ms(f.to_first_collective),
        "steps_rolled_back": f.steps_rolled_back,
    })
    .to_string()
}
