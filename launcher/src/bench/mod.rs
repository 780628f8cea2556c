//! `ringrun bench`: nccl-tests' `all_reduce_perf`, over ringrun's CPU transports, or on GPU
//! buffers with `--device cuda` (`device`: NCCL, or staged through host memory; timed by
//! `device_sweep`).
//!
//! Without `--rank`, this process is the parent: it spawns `--np` ranks of itself, exchanges
//! their addresses (`rendezvous`) and exits with the worst child status. With `--rank` and
//! `--peers`, it is one rank of a multi-host run. Rank 0 prints the table (`report`).

mod comm;
mod connect;
mod device;
mod device_sweep;
mod fusion;
mod rendezvous;
mod report;
mod sweep;

use std::{
    net::{SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use ringrun_collectives::{
    AlgoChoice, CommConfig, DType, ReduceOp,
    transport::{TransportKind, auth::JobSecret},
};

/// Options of `ringrun bench`, named as in nccl-tests where nccl-tests has them.
#[derive(Args, Debug, Clone)]
pub(crate) struct BenchArgs {
    /// Number of local ranks to start.
    #[arg(long, default_value_t = 2)]
    np: usize,
    /// Smallest size in bytes (K, M, G suffixes are binary).
    #[arg(short = 'b', long = "minbytes", default_value = "8", value_parser = parse_size)]
    min_bytes: usize,
    /// Largest size in bytes.
    #[arg(short = 'e', long = "maxbytes", default_value = "64M", value_parser = parse_size)]
    max_bytes: usize,
    /// Multiply the size by this factor each step.
    #[arg(short = 'f', long = "stepfactor", default_value_t = 2)]
    step_factor: usize,
    /// Timed iterations per size.
    #[arg(short = 'n', long = "iters", default_value_t = 20)]
    iters: usize,
    /// Untimed warm-up iterations per size.
    #[arg(short = 'w', long = "warmup_iters", default_value_t = 5)]
    warmup: usize,
    /// Seconds of timed work per size: fewer iterations (at least 3) for large sizes.
    #[arg(long)]
    budget: Option<f64>,
    /// Element type (float, double, half, bfloat16, int8, uint8, int32, int64).
    #[arg(short = 'd', long = "datatype", default_value = "float", value_parser = parse_dtype)]
    dtype: DType,
    /// Reduce op (sum, prod, min, max, avg).
    #[arg(short = 'o', long = "op", default_value = "sum", value_parser = parse_op)]
    op: ReduceOp,
    /// Check results (1) or not (0).
    #[arg(short = 'c', long = "check", default_value_t = 1)]
    check: u8,
    /// Transport between ranks (default `auto`: shared memory between ranks on one host, TCP
    /// between hosts, with the hierarchical allreduce when a job spans hosts of several ranks;
    /// with --device cuda, NCCL when each rank has its own GPU, else staged over shm). `nccl`
    /// implies --device cuda; tcp, quic or shm with --device cuda stage GPU buffers through
    /// pinned host memory.
    #[arg(long)]
    transport: Option<TransportKind>,
    /// Where the buffers live: host memory, or this rank's GPU (`rank % devices`).
    #[arg(long, value_enum, default_value_t = DeviceKind::Cpu)]
    device: DeviceKind,
    /// Allreduce algorithm (`tree` is recursive doubling, `hd` Rabenseifner's halving-doubling,
    /// `arena` the shared-memory arena of ranks on one host).
    #[arg(long, value_enum, default_value_t = AlgoArg::Auto)]
    algo: AlgoArg,
    /// Reduce in rank order, independent of algorithm and ring position.
    #[arg(long)]
    deterministic: bool,
    /// Pipeline segment size in bytes.
    #[arg(long, value_parser = parse_size)]
    segment_bytes: Option<usize>,
    /// Microseconds a waiting rank polls before it sleeps (default: the communicator's).
    #[arg(long)]
    spin_us: Option<u64>,
    /// Threads a rank may reduce a large segment with (default: the host's cores divided by
    /// the ranks on it).
    #[arg(long)]
    reduce_threads: Option<usize>,
    /// Bytes of each shared-memory ring (`--transport shm`).
    #[arg(long, value_parser = parse_size)]
    shm_ring_bytes: Option<usize>,
    /// Bytes of each of a rank's three shared-memory arena buffers (0: no arena).
    #[arg(long, value_parser = parse_size)]
    shm_arena_bytes: Option<usize>,
    /// Largest arena round every rank reduces whole rather than by parts.
    #[arg(long, value_parser = parse_size)]
    arena_one_shot_bytes: Option<usize>,
    /// Out-of-place arena allreduces at least this large, summed over the host's ranks, write
    /// their results with streaming stores (0: always; a huge value: never).
    #[arg(long, value_parser = parse_size)]
    arena_stream_bytes: Option<usize>,
    /// Out-of-place two-rank allreduces at least this large write the half the peer reduced
    /// with streaming stores (0: always; a huge value: never).
    #[arg(long, value_parser = parse_size)]
    pair_stream_bytes: Option<usize>,
    /// Largest allreduce in bytes sent by recursive doubling under `--algo auto`.
    #[arg(long, value_parser = parse_size)]
    small_bytes: Option<usize>,
    /// Largest allreduce in bytes run by halving-doubling under `--algo auto` (power-of-two
    /// worlds of 4 or more).
    #[arg(long, value_parser = parse_size)]
    mid_bytes: Option<usize>,

    /// Measure a grouped allreduce instead of the sweep: COUNTxBYTES tensors (comma-separated
    /// list for mixed sizes, e.g. `1000x4K` or `500x4K,10x1M`), beside one allreduce of their
    /// total size.
    #[arg(long, value_parser = fusion::parse_spec)]
    fusion: Option<fusion::Spec>,
    /// Largest fusion bucket in bytes (default: the communicator's, 128 MiB).
    #[arg(long, value_parser = parse_size)]
    fusion_bytes: Option<usize>,
    /// Time each link's waits (what the straggler check reads): `on`, as the runtime does, or
    /// `off`, to measure what the timing costs.
    #[arg(long, default_value = "on", value_parser = ["on", "off"])]
    link_timing: String,
    /// Internal (tests): pretend rank r runs on host label r of this list (`--transport auto`).
    #[arg(long, hide = true, value_delimiter = ',')]
    host_labels: Vec<u64>,
    /// Write nccl-tests' JSON results here (rank 0).
    #[arg(short = 'J', long = "output_file")]
    json: Option<PathBuf>,
    /// Address the ranks listen on.
    #[arg(long, default_value = "127.0.0.1")]
    bind: std::net::IpAddr,
    /// Seconds the ranks have to find each other and connect.
    #[arg(long, default_value_t = 30)]
    start_timeout: u64,
    /// Seconds before a single collective gives up.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// File holding the job secret (default: $RINGRUN_SECRET, else a fresh random secret).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Run as this rank of a multi-host job (with --peers).
    #[arg(long, requires = "peers_or_rendezvous")]
    rank: Option<usize>,
    /// Every rank's data-plane address, in rank order (multi-host runs).
    #[arg(long, value_delimiter = ',', group = "peers_or_rendezvous")]
    peers: Vec<SocketAddr>,
    /// Internal: the parent's rendezvous address.
    #[arg(long, hide = true, group = "peers_or_rendezvous")]
    rendezvous: Option<SocketAddr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum DeviceKind {
    Cpu,
    Cuda,
}

impl BenchArgs {
    /// The device and the transport, defaults resolved: (cuda?, data transport).
    fn resolved(&self) -> (bool, TransportKind) {
        let cuda = self.device == DeviceKind::Cuda || self.transport == Some(TransportKind::Nccl);
        (cuda, self.transport.unwrap_or(TransportKind::Auto))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
enum AlgoArg {
    Auto,
    Ring,
    /// Recursive doubling.
    Tree,
    /// Rabenseifner's halving-doubling.
    Hd,
    /// The shared-memory arena (ranks on one host; elsewhere as `auto`).
    Arena,
}

fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let (num, mult) = match s.chars().last() {
        Some('K' | 'k') => (&s[..s.len() - 1], 1 << 10),
        Some('M' | 'm') => (&s[..s.len() - 1], 1 << 20),
        Some('G' | 'g') => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.parse::<f64>()
        .map(|v| (v * mult as f64) as usize)
        .map_err(|_| format!("not a size: {s:?}"))
}

fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).ok_or_else(|| format!("unknown datatype {s:?}"))
}

fn parse_op(s: &str) -> Result<ReduceOp, String> {
    ReduceOp::parse(s).ok_or_else(|| format!("unknown op {s:?}"))
}

/// Entry point of `ringrun bench`.
pub(crate) fn main(args: BenchArgs) -> Result<ExitCode> {
    if args.step_factor < 2 || args.min_bytes > args.max_bytes || args.np == 0 {
        bail!("need --np ≥ 1, -b ≤ -e and -f ≥ 2");
    }
    let (cuda, transport) = args.resolved();
    if cuda {
        // Before any rank starts: a machine without the libraries gets one clear line.
        device::probe(transport == TransportKind::Nccl)?;
    }
    match args.rank {
        Some(rank) => run_rank(&args, rank, JobSecret::from_bytes(&secret(&args)?)),
        None => run_parent(&args),
    }
}

/// The job secret's bytes: from the file or environment, else fresh for this local run.
fn secret(args: &BenchArgs) -> Result<Vec<u8>> {
    crate::secret::or_random(args.secret_file.as_deref())
}

fn run_parent(args: &BenchArgs) -> Result<ExitCode> {
    let secret = secret(args)?;
    let listener = TcpListener::bind((std::net::Ipv4Addr::LOCALHOST, 0))?;
    let server = listener.local_addr()?;
    let exe = std::env::current_exe()?;
    let passthrough: Vec<String> = std::env::args().skip(2).collect();
    let mut children: Vec<Child> = (0..args.np)
        .map(|rank| {
            let mut cmd = Command::new(&exe);
            cmd.arg("bench").args(&passthrough);
            cmd.args([
                "--rank",
                &rank.to_string(),
                "--rendezvous",
                &server.to_string(),
            ]);
            cmd.env(
                crate::secret::SECRET_ENV,
                String::from_utf8_lossy(&secret).as_ref(),
            );
            if rank != 0 {
                cmd.stdout(std::process::Stdio::null());
            }
            cmd.spawn().with_context(|| format!("starting rank {rank}"))
        })
        .collect::<Result<_>>()?;
    let start_timeout = Duration::from_secs(args.start_timeout);
    if let Err(e) = rendezvous::serve(&listener, args.np, Instant::now() + start_timeout) {
        children.iter_mut().for_each(|c| drop(c.kill()));
        return Err(e);
    }
    let mut worst = 0;
    for (rank, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            eprintln!("ringrun bench: rank {rank} exited with {status}");
            worst = worst.max(status.code().unwrap_or(1));
        }
    }
    Ok(ExitCode::from(worst.clamp(0, 255) as u8))
}

fn run_rank(args: &BenchArgs, rank: usize, secret: JobSecret) -> Result<ExitCode> {
    ringrun_collectives::transport::set_link_timing(args.link_timing == "on");
    let rt = ringrun_collectives::exec::Executor::new("ringrun-bench")?;
    let start_timeout = Duration::from_secs(args.start_timeout);
    let bind = args
        .peers
        .get(rank)
        .copied()
        .unwrap_or(SocketAddr::new(args.bind, 0));
    let defaults = CommConfig::default();
    let config = CommConfig {
        algo: match args.algo {
            AlgoArg::Auto => AlgoChoice::Auto,
            AlgoArg::Ring => AlgoChoice::Ring,
            AlgoArg::Tree => AlgoChoice::RecursiveDoubling,
            AlgoArg::Hd => AlgoChoice::HalvingDoubling,
            AlgoArg::Arena => AlgoChoice::Arena,
        },
        deterministic: args.deterministic,
        segment_bytes: args.segment_bytes.unwrap_or(defaults.segment_bytes),
        small_bytes: args.small_bytes.unwrap_or(defaults.small_bytes),
        mid_bytes: args.mid_bytes.unwrap_or(defaults.mid_bytes),
        spin: args.spin_us.map_or(defaults.spin, Duration::from_micros),
        spin_yield: defaults.spin_yield,
        reduce_threads: args.reduce_threads.unwrap_or(defaults.reduce_threads),
        fusion_bytes: args.fusion_bytes.unwrap_or(defaults.fusion_bytes),
        arena_one_shot_bytes: args
            .arena_one_shot_bytes
            .unwrap_or(defaults.arena_one_shot_bytes),
        arena_stream_bytes: args
            .arena_stream_bytes
            .unwrap_or(defaults.arena_stream_bytes),
        pair_stream_bytes: args.pair_stream_bytes.unwrap_or(defaults.pair_stream_bytes),
    };
    let setup = connect::Setup {
        args,
        rank,
        secret,
        config,
        bind,
        deadline: Instant::now() + start_timeout,
    };
    let wrong = rt.block_on(setup.run())?;
    Ok(if wrong == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

/// Runs the measurement the arguments ask for; returns the number of wrong elements.
async fn drive<C: comm::BenchComm>(comm: C, args: &BenchArgs, transport: &str) -> Result<u64> {
    match &args.fusion {
        Some(spec) => fusion::run(comm, args, transport, spec).await,
        None => sweep::run(comm, args, transport).await,
    }
}
