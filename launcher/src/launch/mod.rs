//! `ringrun launch [OPTIONS] -- CMD [ARGS...]`: start local workers in the spirit of torchrun and
//! horovodrun, hand each its role through the environment ([`env`]), tag their output, restart
//! the ones that fail ([`supervisor`]), report membership events ([`watch`]).

pub(crate) mod compat;
pub(crate) mod console;
pub(crate) mod dashboard;
pub(crate) mod discovery;
pub(crate) mod env;
pub(crate) mod input;
pub(crate) mod slurm;
pub(crate) mod summary;
pub(crate) mod supervisor;
pub(crate) mod watch;

use std::{
    collections::BTreeMap,
    io::Write,
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    process::ExitCode,
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use clap::Args;
use ringrun_collectives::transport::TransportKind;
use ringrun_membership::{Authenticator, JobId};
use ringrun_runtime::{
    control::{Completion, ControlCodec},
    member::MemberKey,
};
use rustix::process::Signal;

use crate::secret;
use env::{JobEnv, Slot};
use supervisor::{Event, Mode, Supervisor};

/// Options of `ringrun launch` (and of `ringrun demo`).
#[derive(Args, Debug, Clone)]
pub(crate) struct LaunchArgs {
    /// Workers on this host.
    /// Workers on this host (default: 1 for launch, 4 for the demo).
    #[arg(long = "nproc-per-node", visible_alias = "np")]
    pub(crate) nproc: Option<usize>,
    /// Hosts in the job, `MIN[:MAX]` (torchrun's sense): the world is at least MIN × nproc.
    #[arg(long)]
    pub(crate) nnodes: Option<String>,
    /// Smallest world that trains (Horovod's --min-np); default 1.
    #[arg(long)]
    pub(crate) min_np: Option<usize>,
    /// Largest world (Horovod's --max-np); more workers wait outside.
    #[arg(long)]
    pub(crate) max_np: Option<usize>,
    /// Membership addresses of a job started elsewhere (`HOST:PORT,...`).
    #[arg(long, value_delimiter = ',')]
    pub(crate) seeds: Vec<String>,
    /// Address the workers bind (and advertise).
    #[arg(long, default_value = "127.0.0.1")]
    pub(crate) bind: IpAddr,
    /// The launcher's own membership port (0: any). Every host's launcher of a multi-host
    /// job uses the same one, so the host list is the seed list (Slurm: 29450 by default).
    #[arg(long, default_value_t = 0)]
    pub(crate) port: u16,
    /// This host's index among the job's hosts (GROUP_RANK).
    #[arg(long, default_value_t = 0)]
    pub(crate) node_rank: usize,
    /// Restarts allowed for the whole job before it fails.
    #[arg(long, default_value_t = 3)]
    pub(crate) max_restarts: u32,
    /// Directory for durable checkpoints.
    #[arg(long)]
    pub(crate) checkpoint_dir: Option<PathBuf>,
    /// The workers' links (`RINGRUN_TRANSPORT`): `auto` (shared memory between the workers
    /// on one host, TCP between hosts, hierarchical allreduce when a job spans hosts with
    /// several workers each), `tcp`, `quic` (encrypts every byte), `shm` (every worker of the
    /// job on this host), or `nccl`, which gives every worker a device group on NCCL alone (one
    /// NCCL communicator per epoch on GPU `LOCAL_RANK % devices`; without CUDA and NCCL, or
    /// with more workers than GPUs, the workers fail at join, naming the reason).
    #[arg(long, default_value = "auto")]
    pub(crate) transport: TransportKind,
    /// Where the workers' device collectives run (`RINGRUN_DEVICE`): `cuda` gives every worker a
    /// device group, over NCCL where it can run, else staged through pinned host memory over
    /// `--transport`; `cpu`, none.
    #[arg(long, default_value = "cpu", value_parser = ["cpu", "cuda"])]
    pub(crate) device: String,
    /// File holding the job secret (default: $RINGRUN_SECRET; a local-only job gets a random one).
    #[arg(long)]
    pub(crate) secret_file: Option<PathBuf>,
    /// Directory for one log file per worker.
    #[arg(long)]
    pub(crate) log_dir: Option<PathBuf>,
    /// The job's run id (all hosts of a job must agree).
    #[arg(long, default_value = "ringrun")]
    pub(crate) run_id: String,
    /// Horovod-style host discovery: an executable printing `host:slots` lines, polled; this
    /// host's workers grow and shrink to its slots.
    #[arg(long)]
    pub(crate) host_discovery_script: Option<PathBuf>,
    /// How often the discovery script runs, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub(crate) discovery_interval_ms: u64,
    /// This host's name in the discovery script's output (default: its host name;
    /// `localhost` and the --bind address always match).
    #[arg(long)]
    pub(crate) host_name: Option<String>,
    /// Serve a live web page of the job, `/api/status` and Prometheus' `/metrics` on
    /// `[ADDR:]PORT` (a bare port: the --bind address). Beyond loopback every request needs
    /// the token in the URL the launcher prints (derived from the job secret).
    #[arg(long, value_name = "[ADDR:]PORT")]
    pub(crate) dashboard: Option<String>,
    /// A rank is a straggler when its work outside collectives per step (or a link's round
    /// trip) exceeds this many times the median of the others' (logged, on the page, in
    /// /metrics and `ringrun status`).
    #[arg(long, default_value_t = 1.5)]
    pub(crate) straggler_factor: f64,
    /// ... over this many steps (RINGRUN_STRAGGLER_STEPS: each worker's averaging window).
    #[arg(long, default_value_t = 10)]
    pub(crate) straggler_steps: u32,
    /// inprocess: survivors keep running and a failed worker is restarted and rejoins;
    /// restart: every local worker is restarted on any failure (static-world scripts).
    #[arg(long, value_enum, default_value = "inprocess")]
    pub(crate) mode: Mode,
}

/// torchrun's and horovodrun's options that ringrun honours under their own names (the rest
/// are rewritten into ringrun's options by [`compat`]).
#[derive(Args, Debug, Clone, Default)]
#[command(next_help_heading = "torchrun / horovodrun options")]
pub(crate) struct CompatArgs {
    /// MASTER_ADDR handed to the workers (default: the --bind address).
    #[arg(long)]
    pub(crate) master_addr: Option<String>,
    /// MASTER_PORT handed to the workers (default: a free port on --bind).
    #[arg(long)]
    pub(crate) master_port: Option<u16>,
    /// Streams that go to the log files only, not the console (-r): 0 none, 1 stdout,
    /// 2 stderr, 3 both, or LOCAL_RANK:N,... (without --log-dir, a directory under /tmp).
    #[arg(long, value_name = "SPEC")]
    pub(crate) redirects: Option<String>,
    /// Streams written to the log files and the console (-t; the same SPEC as --redirects).
    #[arg(long, value_name = "SPEC")]
    pub(crate) tee: Option<String>,
    /// Local ranks whose output reaches the console, e.g. `0` or `0,1`.
    #[arg(long, value_name = "RANKS")]
    pub(crate) local_ranks_filter: Option<String>,
    /// Slots of a host the discovery script lists without a count.
    #[arg(long, default_value_t = 1)]
    pub(crate) slots_per_host: usize,
    /// Seconds the first epoch waits for the initial workers (RINGRUN_INITIAL_WAIT_MS).
    #[arg(long, value_name = "SECONDS")]
    pub(crate) start_timeout: Option<u64>,
}

/// Options of `ringrun launch`: the shared ones plus the command.
#[derive(Args, Debug)]
pub(crate) struct LaunchCmd {
    #[command(flatten)]
    pub(crate) launch: LaunchArgs,
    /// Input files split over the workers by bytes (repeatable): a file, a directory (its
    /// files, recursively, hidden names skipped), a glob, or @LIST (a file of such paths, one a
    /// line). Each worker gets its share in INPUT_FILE_LIST (comma-separated) and
    /// RINGRUN_INPUT_FILES (one a line), and the whole list in the file named by
    /// RINGRUN_INPUT_MANIFEST (`SIZE<TAB>PATH` lines).
    #[arg(long = "input", value_name = "PATH")]
    pub(crate) input: Vec<String>,
    #[command(flatten)]
    pub(crate) compat: CompatArgs,
    /// The worker command and its arguments.
    #[arg(required = true, last = true)]
    pub(crate) cmd: Vec<String>,
}

/// A started job: the supervisor and the watcher's events.
pub(crate) struct Running {
    pub(crate) sup: Supervisor,
    pub(crate) seen: std::sync::mpsc::Receiver<watch::Seen>,
    pub(crate) started: Instant,
    discovery: Option<discovery::Discovery>,
    bind: IpAddr,
    node_rank: usize,
    /// Live workers seen by SWIM (membership address → key, control address), to tell them
    /// when a local worker's process exits.
    workers: BTreeMap<SocketAddr, (MemberKey, SocketAddr)>,
    notify: (std::net::UdpSocket, ControlCodec),
    /// The job's completion, once a member announced it.
    completion: Option<Completion>,
    /// The job as the launcher sees it (stragglers logged; the page with --dashboard).
    dashboard: dashboard::Dashboard,
}

pub(crate) fn main(args: LaunchCmd) -> Result<ExitCode> {
    let mut launch = args.launch.clone();
    let console = console::Console::new(
        args.compat.redirects.as_deref(),
        args.compat.tee.as_deref(),
        args.compat.local_ranks_filter.as_deref(),
    )?;
    if console.needs_files() && launch.log_dir.is_none() {
        let dir =
            std::env::temp_dir().join(format!("ringrun-{}-{}", launch.run_id, std::process::id()));
        eprintln!("ringrun: worker logs in {}", dir.display());
        launch.log_dir = Some(dir);
    }
    let program = program_name(&args.cmd);
    let mut job = match start_with(&launch, &args.compat, &args.input, args.cmd) {
        Ok(job) => job,
        Err(e) if e.is::<input::BadInput>() => {
            eprintln!("ringrun launch: error: {e:#}");
            return Ok(ExitCode::from(summary::code::USAGE));
        }
        Err(e) => return Err(e),
    };
    let signals = watch::signals()?;
    let mut report = Report {
        console,
        ..Report::default()
    };
    loop {
        job.rediscover()?;
        for ev in job.poll(Duration::from_millis(50), &mut report)? {
            report.print(&job, &ev);
        }
        let sig = signals.load(Ordering::SeqCst);
        if sig != 0 {
            eprintln!("ringrun: signal {sig}: stopping the workers");
            let s = if sig == 2 { Signal::INT } else { Signal::TERM };
            job.sup.stop(s, Duration::from_secs(10));
            for ev in job.sup.drain(Duration::from_millis(300)) {
                report.print(&job, &ev);
            }
            return Ok(ExitCode::from(128 + sig as u8));
        }
        if job.sup.finished() {
            break;
        }
    }
    report.summary(&job);
    if job.sup.succeeded() {
        return Ok(ExitCode::SUCCESS);
    }
    for line in summary::lines(&program, &hostname(), &report.failures, job.started) {
        eprintln!("{line}");
    }
    // The job fails only when a failure finds the restart budget spent, or a worker failed
    // after the others had finished.
    Ok(ExitCode::from(match job.sup.restarts() {
        _ if job.sup.failed_after_completion() => summary::code::WORKER_FAILED,
        0 => summary::code::WORKER_FAILED,
        _ => summary::code::RESTARTS_SPENT,
    }))
}

/// The program's name for the summary: the script or module where the command runs one with
/// Python.
fn program_name(cmd: &[String]) -> String {
    let module = cmd
        .iter()
        .position(|a| a == "-m")
        .and_then(|i| cmd.get(i + 1));
    let script = cmd.iter().find(|a| a.ends_with(".py"));
    let name = module.or(script).or(cmd.first()).map_or("", String::as_str);
    name.rsplit('/').next().unwrap_or(name).to_string()
}

/// Resolves the options into a job and starts its workers.
pub(crate) fn start(a: &LaunchArgs, cmd: Vec<String>) -> Result<Running> {
    start_with(a, &CompatArgs::default(), &[], cmd)
}

/// [`start`], with the torchrun / horovodrun options ringrun honours and `--input`.
pub(crate) fn start_with(
    a: &LaunchArgs,
    c: &CompatArgs,
    inputs: &[String],
    cmd: Vec<String>,
) -> Result<Running> {
    let a = &with_slurm(a.clone(), |k| std::env::var(k).ok())?;
    let nproc = a.nproc.unwrap_or(1);
    if nproc == 0 {
        bail!("--nproc-per-node must be at least 1");
    }
    // Listed once, before anything starts; a bad --input stops the launch here.
    let files = match inputs.is_empty() {
        true => None,
        false => Some(input::list(inputs, &std::env::current_dir()?)?),
    };
    let (min_nodes, max_nodes) = parse_nnodes(a.nnodes.as_deref())?;
    let host = a.host_name.clone().unwrap_or_else(hostname);
    let discovery = a.host_discovery_script.clone().map(|script| {
        let names = vec![host.clone(), "localhost".into(), a.bind.to_string()];
        discovery::Discovery::new(
            script,
            names,
            c.slots_per_host.max(1),
            Duration::from_millis(a.discovery_interval_ms),
        )
    });
    let nproc = match &discovery {
        Some(d) => d.slots()?,
        None => nproc,
    };
    let joining = !a.seeds.is_empty();
    let secret = match joining {
        true => secret::from_file_or_env(a.secret_file.as_deref())?
            .context("joining a job needs its secret: --secret-file or RINGRUN_SECRET")?,
        false => secret::or_random(a.secret_file.as_deref())?,
    };
    let launcher_node = u64::MAX - a.node_rank as u64;
    // Tells workers that a local one exited, and hears from the job's members that it completed.
    let notify_socket = std::net::UdpSocket::bind((a.bind, 0))?;
    notify_socket.set_nonblocking(true)?;
    let (watch_addr, seen) = watch::start(
        SocketAddr::new(a.bind, a.port),
        JobId::from_run_id(&a.run_id),
        secret.clone(),
        host.clone(),
        launcher_node,
        notify_socket.local_addr()?,
    )?;
    let slots: Vec<Slot> = (0..nproc)
        .map(|i| {
            Ok(Slot {
                node_id: (a.node_rank * 65_536 + i) as u64,
                local_rank: i,
                rank: a.node_rank * nproc + i,
                member_addr: SocketAddr::new(a.bind, free_udp_port(a.bind)?),
                restarts: 0,
            })
        })
        .collect::<Result<_>>()?;
    eprintln!(
        "ringrun: job {} on {}: `ringrun status --seeds {watch_addr}` shows its members",
        a.run_id,
        hostname()
    );
    let mut seeds = vec![watch_addr];
    seeds.extend(slots.iter().map(|s| s.member_addr));
    seeds.extend(crate::launch_seeds(&a.seeds, a.bind.is_ipv4())?);
    let world = nproc * min_nodes.max(1);
    let inputs = files
        .map(|f| input::Inputs::new(&f, world, a.log_dir.as_deref(), &a.run_id))
        .transpose()?;
    let job = JobEnv {
        run_id: a.run_id.clone(),
        secret: String::from_utf8(secret).context("the job secret must be text")?,
        seeds,
        world_size: world,
        local_world_size: nproc,
        group_rank: a.node_rank,
        min_size: a
            .min_np
            .or(a.nnodes.as_ref().map(|_| min_nodes * nproc))
            .unwrap_or(1),
        max_size: a.max_np.or(max_nodes.map(|m| m * nproc)),
        master: (
            c.master_addr.clone().unwrap_or_else(|| a.bind.to_string()),
            match c.master_port {
                Some(p) => p,
                None => free_tcp_port(a.bind)?,
            },
        ),
        group_world_size: min_nodes.max(1),
        max_restarts: a.max_restarts,
        checkpoint_dir: a.checkpoint_dir.as_ref().map(|p| p.display().to_string()),
        transport: a.transport,
        device: a.device.clone(),
        host,
        workers: slots.iter().map(|s| s.member_addr).collect(),
        extra: {
            let mut v = extra_env(c, nproc, std::env::var_os("OMP_NUM_THREADS").is_some());
            v.push((
                "RINGRUN_STRAGGLER_STEPS".into(),
                a.straggler_steps.max(1).to_string(),
            ));
            v
        },
        inputs,
    };
    let auth = Authenticator::new(JobId::from_run_id(&a.run_id), job.secret.as_bytes())?;
    let notify = (notify_socket, ControlCodec::new(auth));
    // Before the workers, so that a port in use stops the launch with nothing started.
    let listen = a
        .dashboard
        .as_deref()
        .map(|spec| dashboard::parse_addr(spec, a.bind))
        .transpose()?;
    let auth = Authenticator::new(JobId::from_run_id(&a.run_id), job.secret.as_bytes())?;
    let dashboard = dashboard::Dashboard::start(dashboard::Options {
        listen,
        bind: a.bind,
        secret: job.secret.as_bytes(),
        run_id: &a.run_id,
        codec: ControlCodec::new(auth),
        straggler_factor: a.straggler_factor,
        straggler_steps: a.straggler_steps.max(1),
    })?;
    if let Some(url) = &dashboard.url {
        eprintln!("ringrun: dashboard at {url}");
    }
    let sup = Supervisor::start(cmd, job, slots, a.mode, a.log_dir.clone())?;
    Ok(Running {
        workers: BTreeMap::new(),
        notify,
        completion: None,
        dashboard,
        sup,
        seen,
        started: Instant::now(),
        discovery,
        bind: a.bind,
        node_rank: a.node_rank,
    })
}

impl Running {
    /// Polls the workers and the membership watcher; tells the group at once when a local
    /// worker's process exits (proof of death: no waiting for SWIM's suspicion timeout).
    pub(crate) fn poll(&mut self, within: Duration, report: &mut Report) -> Result<Vec<Event>> {
        self.hear_completion();
        let events = self.sup.poll(within)?;
        for ev in &events {
            if let Event::Exited { slot, status, .. } = ev
                && !status.success()
            {
                self.announce_exit(*slot);
            }
        }
        let seen: Vec<watch::Seen> = self.seen.try_iter().collect();
        seen.iter().for_each(|s| self.dashboard.saw(s));
        self.dashboard.restarts(self.sup.restarts());
        for s in &seen {
            match (s.what, s.worker) {
                ("up", Some(w)) => {
                    self.workers.insert(s.addr, w);
                    self.pass_on_completion(&[w.1]);
                }
                ("down" | "left", _) => {
                    self.workers.remove(&s.addr);
                }
                _ => {}
            }
            report.membership(self, s);
        }
        Ok(events)
    }

    /// A member that finished the job said so: no local worker is restarted from now on, and
    /// every worker seen is told (one that joined after the members finished did not hear it).
    fn hear_completion(&mut self) {
        let mut buf = [0u8; 512];
        while let Ok((n, _)) = self.notify.0.recv_from(&mut buf) {
            let Ok(c) = self.notify.1.open_completed(&buf[..n]) else {
                continue;
            };
            if self.completion.replace(c).is_none() {
                eprintln!("ringrun: the job completed at step {}", c.step);
                self.sup.job_completed(c.step);
                let all: Vec<SocketAddr> = self.workers.values().map(|w| w.1).collect();
                self.pass_on_completion(&all);
            }
        }
    }

    fn pass_on_completion(&self, to: &[SocketAddr]) {
        let Some(c) = self.completion else { return };
        let packet = self.notify.1.seal_completed(c);
        for addr in to {
            let _ = self.notify.0.send_to(&packet, addr);
        }
    }

    fn announce_exit(&mut self, slot: usize) {
        let addr = self.sup.slots()[slot].member_addr;
        let Some((key, _)) = self.workers.remove(&addr) else {
            return;
        };
        let (socket, codec) = &self.notify;
        let packet = codec.seal_exited(key);
        for (_, control) in self.workers.values() {
            let _ = socket.send_to(&packet, control);
        }
    }

    /// Polls the discovery script when due and grows or shrinks this host's workers.
    fn rediscover(&mut self) -> Result<()> {
        let Some(d) = self.discovery.as_mut() else {
            return Ok(());
        };
        if !d.due() {
            return Ok(());
        }
        let target = match d.slots() {
            Ok(n) => n,
            Err(e) => {
                eprintln!("ringrun: host discovery: {e:#}");
                return Ok(());
            }
        };
        let active = self.sup.active();
        for &i in active.iter().skip(target).rev() {
            eprintln!(
                "ringrun: host discovery: {target} slot(s) here; stopping worker {}",
                self.sup.slots()[i].rank
            );
            self.sup.retire(i);
        }
        for _ in active.len()..target {
            let i = self.sup.slots().len();
            let slot = Slot {
                node_id: (self.node_rank * 65_536 + i) as u64,
                local_rank: i,
                rank: self.node_rank * 65_536 + i,
                member_addr: SocketAddr::new(self.bind, free_udp_port(self.bind)?),
                restarts: 0,
            };
            eprintln!(
                "ringrun: host discovery: {target} slot(s) here; starting worker {}",
                slot.rank
            );
            self.sup.add_worker(slot)?;
        }
        Ok(())
    }
}

/// Variables beyond the contract: horovodrun's `--start-timeout`, and `OMP_NUM_THREADS=1`
/// where several workers share the host and it is not set, as torchrun does (each worker's
/// OpenMP pool would otherwise take every core).
fn extra_env(c: &CompatArgs, nproc: usize, omp_set: bool) -> Vec<(String, String)> {
    let mut v = Vec::new();
    if let Some(s) = c.start_timeout {
        v.push(("RINGRUN_INITIAL_WAIT_MS".into(), (s * 1000).to_string()));
    }
    if nproc > 1 && !omp_set {
        eprintln!(
            "ringrun: OMP_NUM_THREADS=1 for each worker, as torchrun sets it (export it to choose)"
        );
        v.push(("OMP_NUM_THREADS".into(), "1".into()));
    }
    v
}

/// Inside a Slurm allocation with no --seeds: the node list (on --port, default 29450) is the
/// seed list, SLURM_NODEID the node rank, SLURM_JOB_ID the run id.
fn with_slurm(mut a: LaunchArgs, var: impl Fn(&str) -> Option<String>) -> Result<LaunchArgs> {
    let Some(s) = slurm::from_env(var)?.filter(|_| a.seeds.is_empty()) else {
        return Ok(a);
    };
    if a.port == 0 {
        a.port = 29450;
    }
    a.seeds = s.hosts.iter().map(|h| format!("{h}:{}", a.port)).collect();
    a.node_rank = s.node_rank;
    if a.run_id == "ringrun" {
        a.run_id = format!("slurm-{}", s.job_id);
    }
    a.nproc = a.nproc.or(s.tasks_per_node);
    if a.nnodes.is_none() {
        a.nnodes = Some(s.hosts.len().to_string());
    }
    eprintln!(
        "ringrun: Slurm allocation: node {} of {} ({})",
        s.node_rank,
        s.hosts.len(),
        s.hosts.join(",")
    );
    Ok(a)
}

fn parse_nnodes(s: Option<&str>) -> Result<(usize, Option<usize>)> {
    let Some(s) = s else { return Ok((1, None)) };
    let (min, max) = match s.split_once(':') {
        Some((a, b)) => (a.parse()?, Some(b.parse()?)),
        None => (s.parse()?, None),
    };
    Ok((min, max))
}

fn free_udp_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::UdpSocket::bind((ip, 0))?.local_addr()?.port())
}

fn free_tcp_port(ip: IpAddr) -> Result<u16> {
    Ok(std::net::TcpListener::bind((ip, 0))?.local_addr()?.port())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into())
}

/// What the launcher saw, printed as it happens and summarised at exit.
#[derive(Default)]
pub(crate) struct Report {
    exits: BTreeMap<usize, Instant>,
    lines: Vec<String>,
    /// Which workers' output is printed (torchrun's --redirects, --local-ranks-filter).
    pub(crate) console: console::Console,
    /// Failed exits, first first: the summary's root cause.
    pub(crate) failures: Vec<summary::Failure>,
}

impl Report {
    pub(crate) fn print(&mut self, job: &Running, ev: &Event) {
        let t = |at: Instant| at.duration_since(job.started).as_secs_f64();
        match ev {
            Event::Line { slot, stderr, .. }
                if !self
                    .console
                    .shows(job.sup.slots()[*slot].local_rank, *stderr) => {}
            Event::Line {
                slot,
                stderr: false,
                text,
                ..
            } => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "[{}] {text}", job.sup.slots()[*slot].rank);
            }
            Event::Line {
                slot,
                stderr: true,
                text,
                ..
            } => {
                eprintln!("[{}] {text}", job.sup.slots()[*slot].rank);
            }
            Event::Exited { slot, status, at } => {
                if !status.success() {
                    self.exits.insert(*slot, *at);
                    let s = &job.sup.slots()[*slot];
                    self.failures.push(summary::Failure {
                        rank: s.rank,
                        local_rank: s.local_rank,
                        status: *status,
                        at: *at,
                        wall: std::time::SystemTime::now(),
                        log: job.sup.log_path(*slot),
                    });
                }
                eprintln!(
                    "ringrun: +{:.2}s worker {} exited: {status}",
                    t(*at),
                    job.sup.slots()[*slot].rank
                );
            }
            Event::Restarting {
                slot,
                attempt,
                after,
            } => {
                let who = slot.map_or("all workers".to_string(), |s| {
                    format!("worker {}", job.sup.slots()[s].rank)
                });
                eprintln!("ringrun: restarting {who} in {after:?} (restart {attempt})");
            }
            Event::GaveUp { slot } => {
                eprintln!(
                    "ringrun: worker {} failed and the restart budget is spent: stopping",
                    job.sup.slots()[*slot].rank
                );
            }
            Event::NotRestarted { slot, why } => {
                eprintln!(
                    "ringrun: worker {} failed after {why}: not restarted (it would train alone \
                     from the last commit)",
                    job.sup.slots()[*slot].rank
                );
            }
        }
    }

    pub(crate) fn membership(&mut self, job: &Running, seen: &watch::Seen) {
        let slot = job
            .sup
            .slots()
            .iter()
            .position(|s| s.member_addr == seen.addr);
        let who = slot.map_or(format!("{} (n{})", seen.addr, seen.node), |s| {
            format!("worker {}", job.sup.slots()[s].rank)
        });
        let mut line = format!(
            "+{:.2}s {who} {}",
            seen.at.duration_since(job.started).as_secs_f64(),
            seen.what
        );
        if let (Some(s), "down") = (slot, seen.what)
            && let Some(exit) = self.exits.get(&s)
        {
            line += &format!(
                " ({} ms after its exit)",
                seen.at.saturating_duration_since(*exit).as_millis()
            );
        }
        eprintln!("ringrun: {line}");
        if seen.what != "suspect" {
            self.lines.push(line);
        }
    }

    pub(crate) fn summary(&self, job: &Running) {
        eprintln!(
            "ringrun: job {} after {:.2}s, {} restart(s); membership events:",
            if job.sup.succeeded() {
                "succeeded"
            } else {
                "failed"
            },
            job.started.elapsed().as_secs_f64(),
            job.sup.restarts()
        );
        for l in &self.lines {
            eprintln!("ringrun:   {l}");
        }
    }
}
