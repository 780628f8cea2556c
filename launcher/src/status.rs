//! `ringrun status`: ask a running job's members for their view and print it.
//!
//! The observer does not join the SWIM group (members would see it come and go); it sends an
//! authenticated view request to the seeds and prints the first complete answer, members that
//! failed or left in the last minutes included (with their state and since when). Each live
//! worker is then asked for its progress report (step, steps per second), and `--watch`
//! redraws the table every second.

use std::{
    collections::BTreeMap,
    net::SocketAddr,
    path::PathBuf,
    process::ExitCode,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use clap::Args;
use ringrun_membership::{Authenticator, MemberInfo, ObserverConfig, observe};
use ringrun_runtime::{
    control::ControlCodec,
    member::{self, EpochAnnotation, MemberKey},
    progress::{Dropped, Report as Progress, Window},
    straggler::Straggler,
};
use serde::Serialize;

use crate::secret;

/// Options of `ringrun status`.
#[derive(Args, Debug)]
pub(crate) struct StatusArgs {
    /// Members to ask (their membership addresses), comma-separated.
    #[arg(long, value_delimiter = ',', required = true)]
    seeds: Vec<SocketAddr>,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
    /// File holding the job secret (default: $RINGRUN_SECRET).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// The job's run id.
    #[arg(long, default_value = "ringrun")]
    job_id: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3.0)]
    timeout: f64,
    /// Redraw every second until interrupted (with --json: one object a line).
    #[arg(long)]
    watch: bool,
    /// A straggler's work per step (or a link's round trip) exceeds this many times the
    /// median of the others'.
    #[arg(long, default_value_t = 1.5)]
    straggler_factor: f64,
    /// ... over windows of at least this many steps.
    #[arg(long, default_value_t = 10)]
    straggler_steps: u32,
}

#[derive(Serialize)]
struct Member {
    id: String,
    addr: SocketAddr,
    state: String,
    incarnation: u64,
    rejoin: u16,
    /// Rank in the responder's installed epoch (none: not in it, or not a worker).
    rank: Option<usize>,
    local_rank: u32,
    host: String,
    device: String,
    endpoints: Vec<String>,
    time_in_state_ms: u64,
    /// From the member's progress report (live workers that answered).
    step: Option<u64>,
    steps_per_s: Option<f64>,
    /// Per-step averages over its straggler window: step time, work outside collectives, and
    /// the wait for each peer's frames (by rank), in seconds.
    window: Option<Window>,
    /// Datagrams it dropped as unauthenticated or malformed (from its report).
    dropped: Option<Dropped>,
}

#[derive(Serialize)]
struct Report {
    /// The responder's installed epoch (none: it is not a worker, or no epoch yet).
    epoch: Option<u64>,
    responder: SocketAddr,
    members: Vec<Member>,
    /// Ranks (or links into them) slower than the others, from the live workers' reports.
    stragglers: Vec<Straggler>,
}

fn member(
    m: &MemberInfo,
    epoch: Option<&EpochAnnotation>,
    progress: &BTreeMap<MemberKey, Progress>,
) -> Member {
    let report = member::worker(&m.id).and_then(|(k, _)| progress.get(&k));
    Member {
        id: format!("{:016x}", m.id.node.0),
        addr: m.id.addr,
        state: format!("{:?}", m.state).to_lowercase(),
        incarnation: m.id.incarnation.0,
        rejoin: m.id.rejoin,
        rank: epoch.and_then(|e| e.rank_of(m.id.node.0, m.id.incarnation.0)),
        local_rank: m.id.meta.local_rank,
        host: m.id.meta.host.clone(),
        device: m.id.meta.device.clone(),
        endpoints: m
            .id
            .meta
            .endpoints
            .iter()
            .map(|e| format!("{:?}:{}", e.transport, e.addr).to_lowercase())
            .collect(),
        time_in_state_ms: m.time_in_state_ms,
        step: report.map(|r| r.step),
        steps_per_s: report.map(|r| r.steps_per_s),
        window: report.and_then(|r| r.window.clone()),
        dropped: report.map(|r| r.dropped),
    }
}

/// Entry point of `ringrun status`.
pub(crate) fn main(args: StatusArgs) -> Result<ExitCode> {
    let secret = secret::from_file_or_env(args.secret_file.as_deref())?
        .context("no job secret: pass --secret-file or set RINGRUN_SECRET")?;
    let bind: SocketAddr = match args.seeds.first() {
        Some(SocketAddr::V6(_)) => "[::]:0".parse()?,
        _ => "0.0.0.0:0".parse()?,
    };
    let job = secret::job_id(&args.job_id);
    let codec = ControlCodec::new(Authenticator::new(job, &secret)?);
    let config = ObserverConfig {
        seeds: args.seeds.clone(),
        job,
        secret,
        bind,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    loop {
        let rule = (args.straggler_factor, args.straggler_steps);
        let report = rt.block_on(once(&config, &codec, rule))?;
        if args.json {
            println!("{}", serde_json::to_string(&report)?);
        } else {
            if args.watch {
                print!("\x1b[H\x1b[2J");
            }
            print_table(&report);
        }
        if !args.watch {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// One look at the job: the view, and the live workers' progress.
async fn once(
    config: &ObserverConfig,
    codec: &ControlCodec,
    (factor, steps): (f64, u32),
) -> Result<Report> {
    let mut view = observe(config).await.context("no member answered")?;
    if EpochAnnotation::decode(&view.annotation).is_none() {
        // The responder is no worker (a launcher, say): ask the workers it knows.
        let workers: Vec<SocketAddr> = view
            .members
            .iter()
            .filter(|m| m.state.is_active() && !m.id.meta.endpoints.is_empty())
            .map(|m| m.id.addr)
            .collect();
        if !workers.is_empty() {
            let config = ObserverConfig {
                seeds: workers,
                ..config.clone()
            };
            if let Ok(mut v) = observe(&config).await {
                // A worker may be younger than a departure the first responder remembers.
                let gone = view
                    .members
                    .into_iter()
                    .filter(|m| !m.state.is_active() && !v.members.iter().any(|n| n.id == m.id));
                v.members.extend(gone.collect::<Vec<_>>());
                view = v;
            }
        }
    }
    let epoch = EpochAnnotation::decode(&view.annotation);
    let progress = progress(&view.members, codec, config.bind).await;
    let stragglers = ringrun_runtime::progress::stragglers(progress.values(), factor, steps);
    Ok(Report {
        epoch: epoch.as_ref().map(|e| e.epoch),
        responder: view.responder.addr,
        members: view
            .members
            .iter()
            .map(|m| member(m, epoch.as_ref(), &progress))
            .collect(),
        stragglers,
    })
}

/// The progress reports of the live workers among `members`, as many as answer within 300 ms.
async fn progress(
    members: &[MemberInfo],
    codec: &ControlCodec,
    bind: SocketAddr,
) -> BTreeMap<MemberKey, Progress> {
    let mut got = BTreeMap::new();
    let Ok(socket) = tokio::net::UdpSocket::bind(bind).await else {
        return got;
    };
    let live: Vec<_> = members
        .iter()
        .filter(|m| m.state.is_active())
        .filter_map(|m| member::worker(&m.id))
        .collect();
    // Scalars are not wanted: ask from the end of the log.
    let request = codec.seal_report_request(u64::MAX);
    for (_, endpoints) in &live {
        let _ = socket.send_to(&request, endpoints.control).await;
    }
    let deadline = Instant::now() + Duration::from_millis(300);
    let mut buf = vec![0u8; 64 * 1024];
    while got.len() < live.len() {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok(Ok((n, _))) = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await else {
            break;
        };
        if let Ok(r) = codec.open_report(&buf[..n])
            && let Some(key) = r.member
        {
            got.insert(key, r);
        }
    }
    got
}

fn print_table(r: &Report) {
    let epoch = r
        .epoch
        .map_or("no epoch".to_string(), |e| format!("epoch {e}"));
    println!(
        "view of {} ({} members, {epoch})",
        r.responder,
        r.members.len()
    );
    println!(
        "{:<16}  {:<21}  {:<7}  {:>16}  {:>6}  {:>4}  {:>5}  {:<12}  {:>10}  {:>7}  {:>7}  ENDPOINTS",
        "ID",
        "ADDR",
        "STATE",
        "INCARNATION",
        "REJOIN",
        "RANK",
        "LOCAL",
        "HOST",
        "IN STATE",
        "STEP",
        "STEPS/S"
    );
    for m in &r.members {
        let or_dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
        println!(
            "{:<16}  {:<21}  {:<7}  {:>16}  {:>6}  {:>4}  {:>5}  {:<12}  {:>9.1}s  {:>7}  {:>7}  {}",
            m.id,
            m.addr.to_string(),
            m.state,
            m.incarnation,
            m.rejoin,
            or_dash(m.rank.map(|r| r.to_string())),
            m.local_rank,
            m.host,
            m.time_in_state_ms as f64 / 1000.0,
            or_dash(m.step.map(|s| s.to_string())),
            or_dash(m.steps_per_s.map(|s| format!("{s:.1}"))),
            m.endpoints.join(",")
        );
    }
    for s in &r.stragglers {
        println!("straggler: {s}");
    }
}
