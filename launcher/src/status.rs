//! `ringrun status`: ask a running job's members for their view and print it.
//!
//! The observer does not join the SWIM group (members would see it come and go); it sends an
//! authenticated view request to the seeds and prints the first complete answer.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use ringrun_membership::{MemberInfo, ObserverConfig, observe};
use ringrun_runtime::member::EpochAnnotation;
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
}

#[derive(Serialize)]
struct Member<'a> {
    id: String,
    addr: SocketAddr,
    state: String,
    incarnation: u64,
    rejoin: u16,
    /// Rank in the responder's installed epoch (none: not in it, or not a worker).
    rank: Option<usize>,
    local_rank: u32,
    host: &'a str,
    device: &'a str,
    endpoints: Vec<String>,
    time_in_state_ms: u64,
}

#[derive(Serialize)]
struct Report<'a> {
    /// The responder's installed epoch (none: it is not a worker, or no epoch yet).
    epoch: Option<u64>,
    responder: SocketAddr,
    members: Vec<Member<'a>>,
}

fn member<'a>(m: &'a MemberInfo, epoch: Option<&EpochAnnotation>) -> Member<'a> {
    Member {
        id: format!("{:016x}", m.id.node.0),
        addr: m.id.addr,
        state: format!("{:?}", m.state).to_lowercase(),
        incarnation: m.id.incarnation.0,
        rejoin: m.id.rejoin,
        rank: epoch.and_then(|e| e.rank_of(m.id.node.0, m.id.incarnation.0)),
        local_rank: m.id.meta.local_rank,
        host: &m.id.meta.host,
        device: &m.id.meta.device,
        endpoints: m
            .id
            .meta
            .endpoints
            .iter()
            .map(|e| format!("{:?}:{}", e.transport, e.addr).to_lowercase())
            .collect(),
        time_in_state_ms: m.time_in_state_ms,
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
    let config = ObserverConfig {
        seeds: args.seeds.clone(),
        job: secret::job_id(&args.job_id),
        secret,
        bind,
        timeout: Duration::from_secs_f64(args.timeout),
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut view = rt
        .block_on(observe(&config))
        .context("no member answered")?;
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
                ..config
            };
            if let Ok(v) = rt.block_on(observe(&config)) {
                view = v;
            }
        }
    }
    let epoch = EpochAnnotation::decode(&view.annotation);
    let report = Report {
        epoch: epoch.as_ref().map(|e| e.epoch),
        responder: view.responder.addr,
        members: view
            .members
            .iter()
            .map(|m| member(m, epoch.as_ref()))
            .collect(),
    };
    if args.json {
        println!("{}", serde_json::to_string(&report)?);
    } else {
        print_table(&report);
    }
    Ok(ExitCode::SUCCESS)
}

fn print_table(r: &Report<'_>) {
    let epoch = r
        .epoch
        .map_or("no epoch".to_string(), |e| format!("epoch {e}"));
    println!(
        "view of {} ({} members, {epoch})",
        r.responder,
        r.members.len()
    );
    println!(
        "{:<16}  {:<21}  {:<7}  {:>16}  {:>6}  {:>4}  {:>5}  {:<12}  {:>10}  ENDPOINTS",
        "ID", "ADDR", "STATE", "INCARNATION", "REJOIN", "RANK", "LOCAL", "HOST", "IN STATE"
    );
    for m in &r.members {
        let rank = m.rank.map_or("-".to_string(), |r| r.to_string());
        println!(
            "{:<16}  {:<21}  {:<7}  {:>16}  {:>6}  {:>4}  {:>5}  {:<12}  {:>9.1}s  {}",
            m.id,
            m.addr.to_string(),
            m.state,
            m.incarnation,
            m.rejoin,
            rank,
            m.local_rank,
            m.host,
            m.time_in_state_ms as f64 / 1000.0,
            m.endpoints.join(",")
        );
    }
}
