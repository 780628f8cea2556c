//! `ringrun member` (hidden): join a job's membership group and stay for a while.
//!
//! A debugging aid and the fixture of `ringrun status`'s tests: it prints `listening ADDR` once
//! the socket is bound, logs membership events, and leaves gracefully when its time is up.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use anyhow::{Context, Result};
use clap::Args;
use ringrun_membership::{DriverConfig, Membership, MembershipConfig, Metadata, NodeId};

use crate::secret;

/// Options of `ringrun member`.
#[derive(Args, Debug)]
pub(crate) struct MemberArgs {
    /// Address for the membership socket.
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Members to join through, comma-separated (none: start a new group).
    #[arg(long, value_delimiter = ',')]
    seeds: Vec<SocketAddr>,
    /// File holding the job secret (default: $RINGRUN_SECRET).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// The job's run id.
    #[arg(long, default_value = "ringrun")]
    job_id: String,
    /// Stable node id (default: random).
    #[arg(long)]
    node: Option<u64>,
    /// Host label gossiped in the metadata.
    #[arg(long, default_value = "")]
    host: String,
    /// Seconds to stay before leaving.
    #[arg(long, default_value_t = 60.0)]
    duration: f64,
}

/// Entry point of `ringrun member`.
pub(crate) fn main(args: MemberArgs) -> Result<ExitCode> {
    let secret = secret::from_file_or_env(args.secret_file.as_deref())?
        .context("no job secret: pass --secret-file or set RINGRUN_SECRET")?;
    let node = args
        .node
        .unwrap_or_else(|| u64::from_le_bytes(*b"ringrun!") ^ u64::from(std::process::id()) << 20);
    let config = DriverConfig {
        bind: args.bind,
        seeds: args.seeds.clone(),
        node: NodeId(node),
        meta: Metadata {
            host: args.host.clone(),
            ..Metadata::default()
        },
        job: secret::job_id(&args.job_id),
        secret,
        membership: MembershipConfig::default(),
        incarnation: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let (member, mut events) = Membership::start(config).await?;
        println!("listening {}", member.local_addr());
        let stay = tokio::time::sleep(Duration::from_secs_f64(args.duration));
        tokio::pin!(stay);
        loop {
            tokio::select! {
                () = &mut stay => break,
                ev = events.recv() => match ev {
                    Ok(ev) => tracing::info!(?ev, "membership event"),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => tracing::warn!(n, "events lagged"),
                    Err(_) => break,
                },
            }
        }
        member.leave().await?;
        anyhow::Ok(ExitCode::SUCCESS)
    })
}
