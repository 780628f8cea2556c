//! [`Group`]: the blocking API workers, the C ABI and the Python package call.
//!
//! The group is the front end of the worker's control plane ([`crate::plane`]), which runs on
//! a driver thread ([`crate::driver`]) and decides the epoch lifecycle ([`crate::lifecycle`]):
//! the group does the IO it asks for on the caller's thread (forms each epoch's mesh on a
//! current-thread runtime, agrees the state, runs the collectives, writes checkpoints), tells
//! it what happened, and refuses the collectives of an epoch the plane ended. Every collective
//! registers a cancellation handle for its epoch, so that the driver aborts it the moment the
//! epoch's membership changes. After a failed call the group refuses collectives (with
//! [`GroupError::MembershipChanged`]) until the caller calls [`Group::restore`], which waits
//! for the next epoch, connects its mesh and agrees the state to resume from.

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use ringrun_collectives::{
    Cancel, CollectiveError, Communicator, Ctl, DType, Element, LayoutComm, Links, ReduceOp,
    TensorMut,
    exec::Executor,
    transport::{
        Transport,
        tcp::{JobSecret, MeshSpec},
    },
};
use ringrun_membership::{Authenticator, DriverConfig, Incarnation, JobId, Metadata, NodeId};
use tokio::sync::watch;
use tracing::{info, info_span, warn};

use crate::{
    acceptor::Acceptor,
    agreement,
    checkpoint::Store,
    config::GroupConfig,
    control::{Completion, ControlCodec},
    device::{DeviceEpochs, UNIQUE_ID_LEN},
    driver::{CancelSlot, Command, Driver, GroupView, Published, Setup},
    error::GroupError,
    failpoint,
    lifecycle::{self, FrontEvent},
    member::{Endpoints, MemberKey},
    mesh::{self, MeshConfig},
    progress::{self, Progress},
    report::FaultEvent,
    rtt::RoundTrips,
    state::{self, Committed, Decision},
};

type Result<T> = std::result::Result<T, GroupError>;

/// Longest the plane may take to take in a failure the group reported (it is a hop to the
/// driver thread; only a stopped driver takes longer).
const REPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// One member of an elastic training group.
pub struct Group {
    config: GroupConfig,
    me: MemberKey,
    secret: JobSecret,
    acceptor: Acceptor,
    driver: Driver,
    published: watch::Receiver<Published>,
    cancel: CancelSlot,
    comm: Option<LayoutComm>,
    view: Option<Arc<GroupView>>,
    /// The plane was told that a collective of the current epoch completed.
    resumed: bool,
    memory: Option<Committed>,
    /// `memory` is the job's final state ([`Group::finish`]).
    finished: bool,
    store: Option<Store>,
    commits: u64,
    step_hint: u64,
    /// What this member reports to dashboards.
    progress: Progress,
    /// The collective in flight, for `progress`: its kind, bytes and start.
    op: Option<(usize, usize, Instant)>,
    /// The links' round trips in this epoch, measured on the commit exchange.
    round_trips: RoundTrips,
    /// Where this member's clock for `round_trips` starts (any instant: only differences of
    /// two members' readings are used, and the clocks' offset cancels).
    clock_origin: Instant,
    /// The device side (`crate::device`), when configured: one communicator per epoch.
    device: Option<Box<dyn DeviceEpochs>>,
    /// Runs the collectives; last, so that it drops after the communicators and drives their
    /// lingering tasks (QUIC's) to their end.
    rt: Executor,
}

impl Group {
    /// Joins (or starts) the group described by `config`, waits until an epoch containing this
    /// member is installed and agrees the state to start from ([`Group::restore`] returns it).
    pub fn join(config: GroupConfig) -> Result<Group> {
        let internal =
            |what: &str, e: &dyn std::fmt::Display| GroupError::Internal(format!("{what}: {e}"));
        // First, so that a missing GPU library fails the join before anything else is made.
        let device = match &config.device {
            Some(spec) => Some(spec.build(&config)?),
            None => None,
        };
        let rt = Executor::new("ringrun-group").map_err(|e| internal("runtime", &e))?;
        let acceptor = Acceptor::bind(SocketAddr::new(config.bind, 0))
            .map_err(|e| internal("TCP listener", &e))?;
        let control = std::net::UdpSocket::bind(SocketAddr::new(config.bind, 0))
            .map_err(|e| internal("control socket", &e))?;
        let endpoints = Endpoints {
            control: control.local_addr().map_err(|e| internal("control", &e))?,
            tcp: acceptor.local_addr(),
        };
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as u64;
        let me = MemberKey {
            incarnation,
            node: config.node,
        };
        let job = JobId::from_run_id(&config.run_id);
        let auth = Authenticator::new(job, &config.secret).map_err(|e| internal("secret", &e))?;
        let cancel: CancelSlot = Arc::new(Mutex::new(None));
        let progress = Progress::new(config.straggler_steps);
        let driver = Driver::spawn(Setup {
            membership: DriverConfig {
                bind: SocketAddr::new(config.bind, config.member_port),
                seeds: config.seeds.clone(),
                node: NodeId(config.node),
                meta: Metadata {
                    endpoints: endpoints.to_meta(),
                    local_rank: config.local_rank,
                    host: config.host.clone(),
                    device: device
                        .as_ref()
                        .map_or_else(|| "cpu".into(), |d| d.describe()),
                    launch_rank: config.launch_rank,
                },
                job,
                secret: config.secret.clone(),
                membership: config.membership.clone(),
                incarnation: Some(Incarnation(incarnation)),
            },
            agreement: agreement::Config {
                min_size: config.min_size,
                max_size: config.max_size,
                initial_size: config.initial_size,
                initial_wait: config.initial_wait,
                bootstrap: config.bootstrap,
                ..agreement::Config::default()
            },
            lifecycle: lifecycle::Config {
                admit_wait: config.admit_wait,
                ..lifecycle::Config::default()
            },
            control,
            codec: ControlCodec::new(auth),
            cancel: cancel.clone(),
            progress: progress.clone(),
        })
        .map_err(|e| internal("driver thread", &e))?;
        let store = match &config.checkpoint_dir {
            Some(dir) => Some(Store::open(dir, 2).map_err(|e| internal("checkpoints", &e))?),
            None => None,
        };
        let mut group = Group {
            secret: JobSecret::from_bytes(&config.secret),
            published: driver.published.clone(),
            config,
            me,
            rt,
            acceptor,
            driver,
            cancel,
            comm: None,
            view: None,
            resumed: false,
            memory: None,
            finished: false,
            store,
            commits: 0,
            step_hint: 0,
            device,
            progress,
            op: None,
            round_trips: RoundTrips::new(0, 1),
            clock_origin: Instant::now(),
        };
        info!(member = %me, "joining");
        group.restore()?;
        Ok(group)
    }

    /// This member's rank in the current epoch.
    pub fn rank(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.rank())
    }

    /// Members in the current epoch.
    pub fn size(&self) -> usize {
        self.comm.as_ref().map_or(0, |c| c.size())
    }

    /// The current epoch (0 before the first).
    pub fn epoch(&self) -> u64 {
        self.comm.as_ref().map_or(0, |c| c.epoch())
    }

    /// This member's key.
    pub fn id(&self) -> MemberKey {
        self.me
    }

    /// What the current epoch's links are (`tcp`, `quic`, `shm`, or `hierarchical`: shared
    /// memory in each host, TCP across); `None` outside an epoch.
    pub fn links(&self) -> Option<&'static str> {
        self.comm.as_ref().map(|c| c.name())
    }

    /// The allreduce algorithm the current epoch runs for `bytes` bytes of `dtype` (the
    /// selection `ringrun bench` uses); `None` outside an epoch.
    pub fn allreduce_algo(&self, dtype: DType, bytes: usize) -> Option<&'static str> {
        self.comm
            .as_ref()
            .map(|c| c.allreduce_algo_name(dtype, bytes))
    }

    /// Recoveries so far, oldest first.
    pub fn faults(&self) -> Vec<FaultEvent> {
        self.published.borrow().faults.clone()
    }

    /// Tells the group which step the caller is working on, so that the fault report can say
    /// how many steps a recovery rolled back.
    pub fn set_step(&mut self, step: u64) {
        self.step_hint = step;
        self.progress.step(step);
    }

    /// The member's progress record, which callers on other threads may log to while a
    /// collective runs (see [`Group::log`]).
    pub fn progress(&self) -> Progress {
        self.progress.clone()
    }

    /// Logs named values (a loss, a learning rate) for `step`, for the dashboard's curves: kept
    /// in memory (the newest few thousand) until a dashboard asks for them.
    pub fn log<'a>(&self, step: u64, values: impl IntoIterator<Item = (&'a str, f64)>) {
        self.progress.log(step, values);
    }

    /// Allreduce of `buf` in place.
    pub fn allreduce<E: Element>(&mut self, buf: &mut [E], op: ReduceOp) -> Result<()> {
        let _span = info_span!("allreduce", epoch = self.epoch(), count = buf.len()).entered();
        let (ctl, epoch) = self.begin_op(0, std::mem::size_of_val(buf))?;
        failpoint::crash_point("allreduce", self.step_hint);
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.allreduce(buf, op, &ctl));
        self.end(epoch, r)
    }

    /// Allreduce of many buffers of one element type in one call, fused into buckets of at
    /// most `GroupConfig`'s fusion size (see [`Group::allreduce_grouped`]).
    pub fn allreduce_many<E: Element>(
        &mut self,
        bufs: &mut [&mut [E]],
        op: ReduceOp,
    ) -> Result<()> {
        let mut tensors: Vec<TensorMut<'_>> = bufs.iter_mut().map(|b| TensorMut::new(b)).collect();
        self.allreduce_grouped(&mut tensors, op)
    }

    /// Allreduce of many tensors of mixed sizes and element types in one call: packed into
    /// buckets (one element type each, at most the configured fusion size), each reduced once.
    /// Tensors at least a bucket large are reduced where they lie.
    pub fn allreduce_grouped(&mut self, tensors: &mut [TensorMut<'_>], op: ReduceOp) -> Result<()> {
        let _span = info_span!(
            "allreduce_grouped",
            epoch = self.epoch(),
            tensors = tensors.len()
        )
        .entered();
        let (ctl, epoch) = self.begin_op(0, tensors.iter().map(|t| t.bytes().len()).sum())?;
        failpoint::crash_point("allreduce", self.step_hint);
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.allreduce_grouped(tensors, op, &ctl));
        self.end(epoch, r)
    }

    /// Broadcast of `buf` from `root`. Every rank must pass the same length, element type and
    /// root, else every rank gets [`GroupError::Mismatch`] and nothing is sent: the root of a
    /// broadcast only sends, so it would not notice a peer that expected another shape. The
    /// ranks first swap one record each (one small allgather) to find out.
    pub fn broadcast<E: Element>(&mut self, buf: &mut [E], root: usize) -> Result<()> {
        let mine = [buf.len() as u64, E::DTYPE as u64, root as u64, 0];
        let mut all = vec![[0u64; 4]; self.size().max(1)];
        self.allgather_words(&mine, &mut all)?;
        if let Some((rank, theirs)) = all.iter().enumerate().find(|(_, r)| **r != mine) {
            let name = |code: u64| {
                u8::try_from(code)
                    .ok()
                    .and_then(DType::from_code)
                    .map_or("?", |d| d.nccl_name())
            };
            return Err(GroupError::Mismatch(format!(
                "broadcast: rank {rank} passed {} {} elements from root {}, rank {} {} {} from root {root}",
                theirs[0],
                name(theirs[1]),
                theirs[2],
                self.rank(),
                buf.len(),
                E::DTYPE.nccl_name(),
            )));
        }
        self.broadcast_unchecked(buf, root)
    }

    /// Broadcast where every rank knows the shape is the same (the state distribution).
    fn broadcast_unchecked<E: Element>(&mut self, buf: &mut [E], root: usize) -> Result<()> {
        let _span = info_span!("broadcast", epoch = self.epoch(), count = buf.len()).entered();
        let (ctl, epoch) = self.begin_op(1, std::mem::size_of_val(buf))?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.flat().broadcast(buf, root, &ctl));
        self.end(epoch, r)
    }

    /// Allgather: `recv` holds every rank's `send`, in rank order.
    pub fn allgather<E: Element>(&mut self, send: &[E], recv: &mut [E]) -> Result<()> {
        let _span = info_span!("allgather", epoch = self.epoch(), count = send.len()).entered();
        let (ctl, epoch) = self.begin_op(2, std::mem::size_of_val(send))?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.flat().allgather(send, recv, &ctl));
        self.end(epoch, r)
    }

    /// Reduce-scatter (NCCL's): `send` holds `size` blocks of `recv.len()` elements; this rank's
    /// `recv` receives the reduction of block `rank` over every rank's `send`.
    pub fn reduce_scatter<E: Element>(
        &mut self,
        send: &[E],
        recv: &mut [E],
        op: ReduceOp,
    ) -> Result<()> {
        let _span =
            info_span!("reduce_scatter", epoch = self.epoch(), count = recv.len()).entered();
        let (ctl, epoch) = self.begin_op(3, std::mem::size_of_val(send))?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self
            .rt
            .block_on(comm.flat().reduce_scatter(send, recv, op, &ctl));
        self.end(epoch, r)
    }

    /// All-to-all with equal blocks (MPI's `MPI_Alltoall`): `send` and `recv` hold `size`
    /// blocks of `send.len() / size` elements; block `j` of `send` goes to rank `j`, and block
    /// `j` of `recv` comes from rank `j`.
    pub fn alltoall<E: Element>(&mut self, send: &[E], recv: &mut [E]) -> Result<()> {
        let _span = info_span!("alltoall", epoch = self.epoch(), count = send.len()).entered();
        let (ctl, epoch) = self.begin_op(5, std::mem::size_of_val(send))?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.flat().alltoall(send, recv, &ctl));
        self.end(epoch, r).map(drop)
    }

    /// Barrier.
    pub fn barrier(&mut self) -> Result<()> {
        let _span = info_span!("barrier", epoch = self.epoch()).entered();
        let (ctl, epoch) = self.begin_op(4, 0)?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self.rt.block_on(comm.flat().barrier(&ctl));
        self.end(epoch, r)
    }

    /// Commits the group's state after `step`. Every rank must commit the same step and bytes
    /// (they are checked). Joiners waiting outside are admitted here, and receive this state.
    pub fn commit(&mut self, step: u64, state: Vec<u8>) -> Result<()> {
        let _span = info_span!("commit", epoch = self.epoch(), step, bytes = state.len()).entered();
        failpoint::crash_point("commit", step);
        let committed = Committed::new(step, Arc::new(state));
        let waiting = self.published.borrow().waiting_to_join;
        let record = state::commit_record(&committed, waiting);
        let all = self.exchange_commit(&record)?;
        let joiners = state::check_commit(&all).map_err(GroupError::Mismatch)?;
        self.memory = Some(committed);
        self.step_hint = step;
        self.commits += 1;
        let waits = self.comm.as_ref().map(|c| c.links().link_waits());
        let round_trips = self.round_trips.round_trips(self.commits);
        self.progress
            .committed(step, waits.unwrap_or_default(), round_trips);
        self.checkpoint_if_due()?;
        if joiners > 0 {
            self.admit()?;
        }
        Ok(())
    }

    /// Waits for an epoch this member belongs to (after a failure: a newer one), connects it
    /// and agrees the state to resume from: the newest committed step any member holds (or
    /// the newest durable checkpoint when the whole group restarted). Returns that step and
    /// its bytes, identical on every rank, or `None` on a fresh start.
    pub fn restore(&mut self) -> Result<Option<(u64, Arc<Vec<u8>>)>> {
        let deadline = Instant::now() + self.config.restore_timeout;
        loop {
            let completed = self.published.borrow().completed;
            if let Some(c) = completed {
                return self.completed_elsewhere(c);
            }
            if self.healthy() {
                return Ok(self.memory.as_ref().map(|c| (c.step, c.bytes.clone())));
            }
            let view = match self.wait_for_view(deadline) {
                // The job completed meanwhile: the top of the loop says with what state.
                Err(GroupError::Completed { .. }) => continue,
                waited => waited?,
            };
            match self.enter(view) {
                Ok(()) => continue,
                Err(e) if e.recoverable() && Instant::now() < deadline => {
                    warn!(error = %e, "epoch failed while forming; waiting for the next");
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Marks the last commit as the job's final state: training is over. Every rank calls it,
    /// after its last [`Group::commit`] (the ranks check they hold the same commit). Joiners
    /// waiting outside are admitted and receive the final state, and every member and launcher
    /// of the job is told that it completed, so that a worker restarted later does not train
    /// again from the start: its [`Group::restore`] returns the final state (from a peer or a
    /// checkpoint marked final) or [`GroupError::Completed`]. With a checkpoint directory the
    /// final state is saved, marked final. A second call is a no-op.
    pub fn finish(&mut self) -> Result<()> {
        if self.finished {
            return Ok(());
        }
        let _span = info_span!("finish", epoch = self.epoch()).entered();
        let Some(last) = self.memory.clone() else {
            return Err(GroupError::InvalidArgument(
                "finish before any commit: there is no state to finish with".into(),
            ));
        };
        let waiting = self.published.borrow().waiting_to_join;
        let all = self.exchange_commit(&state::commit_record(&last, waiting))?;
        let joiners = state::check_commit(&all).map_err(GroupError::Mismatch)?;
        self.finished = true;
        self.write_checkpoint()?;
        if joiners > 0 {
            self.admit()?;
        }
        let completion = Completion {
            step: last.step,
            digest: last.digest,
        };
        self.driver.send(Command::Finish(completion));
        info!(step = last.step, "job finished");
        Ok(())
    }

    /// The job's final step, once this member holds the final state (it called
    /// [`Group::finish`], or received the state from members that did).
    pub fn completed(&self) -> Option<u64> {
        self.finished
            .then(|| self.memory.as_ref().map(|c| c.step))
            .flatten()
    }

    /// The job completed (`c`, announced by a member that finished it): the final state if
    /// this member holds it, or a checkpoint marked final holds it, else `Completed`.
    fn completed_elsewhere(&mut self, c: Completion) -> Result<Option<(u64, Arc<Vec<u8>>)>> {
        let holds = |m: &Committed| m.step == c.step && m.digest == c.digest;
        if !self.memory.as_ref().is_some_and(holds) {
            let disk = match &self.store {
                Some(store) => store
                    .load_latest()
                    .map_err(|e| GroupError::Internal(e.to_string()))?,
                None => None,
            };
            let from_disk = disk
                .filter(|d| d.is_final)
                .map(|d| Committed::new(d.step, Arc::new(d.state)))
                .filter(holds);
            match from_disk {
                Some(m) => self.memory = Some(m),
                None => return Err(GroupError::Completed { step: c.step }),
            }
        }
        self.finished = true;
        info!(
            step = c.step,
            "the job completed; this member holds its final state"
        );
        Ok(self.memory.as_ref().map(|m| (m.step, m.bytes.clone())))
    }

    /// Leaves the group gracefully (the others re-form without it at once).
    pub fn leave(self) {
        info!(member = %self.me, "leaving");
        drop(self);
    }

    fn healthy(&self) -> bool {
        let Some(comm) = &self.comm else { return false };
        over(comm.epoch(), &self.published.borrow()).is_none()
    }

    /// [`Group::begin`] for a collective the progress report counts: of kind `kind` (an index
    /// into `progress::COLLECTIVES`) over `bytes` bytes, timed until [`Group::end`].
    fn begin_op(&mut self, kind: usize, bytes: usize) -> Result<(Ctl, u64)> {
        let r = self.begin()?;
        self.op = Some((kind, bytes, Instant::now()));
        Ok(r)
    }

    /// Checks the epoch is usable and registers a cancellation handle for one collective.
    fn begin(&mut self) -> Result<(Ctl, u64)> {
        let Some(comm) = &self.comm else {
            return Err(changed(0, "not in an epoch: call restore".into()));
        };
        let epoch = comm.epoch();
        if let Some(why) = over(epoch, &self.published.borrow()) {
            return Err(changed(epoch, why));
        }
        let cancel = Cancel::new();
        *self.cancel.lock().unwrap_or_else(|e| e.into_inner()) = Some((epoch, cancel.clone()));
        // Checked again after registering, so that an end published in between is not missed.
        // Read in place (no clone of the publication: this runs before every collective).
        if let Some(why) = over(epoch, &self.published.borrow()) {
            return Err(changed(epoch, why));
        }
        Ok((
            Ctl::timeout(self.config.op_timeout).with_cancel(cancel),
            epoch,
        ))
    }

    fn end<R>(&mut self, epoch: u64, r: std::result::Result<R, CollectiveError>) -> Result<R> {
        let op = self.op.take();
        match r {
            Ok(v) => {
                if let Some((kind, bytes, at)) = op {
                    self.progress.collective(kind, bytes, at.elapsed());
                }
                if !self.resumed {
                    self.resumed = true;
                    self.tell(FrontEvent::Resumed { epoch });
                }
                Ok(v)
            }
            Err(CollectiveError::InvalidArgument(m)) => Err(GroupError::InvalidArgument(m)),
            Err(e) => {
                let mismatch = matches!(e, CollectiveError::Mismatch { .. });
                self.failed(epoch, e.to_string(), mismatch)?;
                Err(GroupError::from_collective(epoch, e))
            }
        }
    }

    fn tell(&self, event: FrontEvent) {
        self.driver.send(Command::Front(event));
    }

    /// A collective of `epoch` failed: the plane ends the epoch (and asks for a new one: at
    /// once, or after a mismatch's grace). Returns once the plane has published the end, so
    /// that the next call sees it.
    fn failed(&mut self, epoch: u64, why: String, mismatch: bool) -> Result<()> {
        self.tell(FrontEvent::Failed {
            epoch,
            why,
            mismatch,
        });
        let deadline = Instant::now() + REPORT_TIMEOUT;
        let ended = |p: &Published| p.ended.as_ref().is_some_and(|(e, _)| *e >= epoch);
        match ended(&self.await_published(deadline, ended)) {
            true => Ok(()),
            false => Err(GroupError::Internal(
                "the control plane did not take in a failure".into(),
            )),
        }
    }

    /// Waits until `ready` holds of the publication, the driver stops or `deadline` passes;
    /// returns the last publication seen.
    fn await_published(
        &mut self,
        deadline: Instant,
        ready: impl Fn(&Published) -> bool,
    ) -> Published {
        loop {
            let p = self.published.borrow_and_update().clone();
            if ready(&p) || p.stopped.is_some() {
                return p;
            }
            let changed = self.published.changed();
            let wait = async { tokio::time::timeout_at(deadline.into(), changed).await };
            if !matches!(self.rt.block_on(wait), Ok(Ok(()))) {
                return p;
            }
        }
    }

    fn wait_for_view(&mut self, deadline: Instant) -> Result<Arc<GroupView>> {
        let (after, me) = (self.epoch(), self.me);
        let listed = move |p: &Published| {
            (p.view.clone()).filter(|v| v.epoch > after && v.rank_of(&me).is_some())
        };
        let p = self.await_published(deadline, |p| p.completed.is_some() || listed(p).is_some());
        if let Some(c) = p.completed {
            return Err(GroupError::Completed { step: c.step });
        }
        if let Some(v) = listed(&p) {
            return Ok(v);
        }
        match p.stopped {
            Some(why) => Err(GroupError::Internal(format!("membership stopped: {why}"))),
            None => Err(GroupError::NoQuorum(
                p.blocked
                    .unwrap_or_else(|| "no epoch with this member".into()),
            )),
        }
    }

    /// Connects the mesh of `view` and agrees the state to resume from.
    fn enter(&mut self, view: Arc<GroupView>) -> Result<()> {
        let _span = info_span!("view_change", epoch = view.epoch).entered();
        let rank = view.rank_of(&self.me).expect("wait_for_view checked");
        let spec = MeshSpec {
            rank,
            addrs: view.members.iter().map(|(_, a)| a.endpoints.tcp).collect(),
            epoch: view.epoch,
        };
        // The old epoch's links go first (a QUIC epoch's drain as tasks on `rt`).
        self.comm = None;
        let config = MeshConfig {
            kind: self.config.transport,
            secret: &self.secret,
            host: &self.config.host,
            comm: &self.config.comm,
        };
        // The plane gives the epoch up at its own mesh deadline, the same length.
        let deadline = Instant::now() + lifecycle::Config::default().mesh_timeout;
        let connect = mesh::connect(&self.acceptor, &spec, &config, deadline);
        let comm = match self.rt.block_on(connect) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("mesh set-up: {e}");
                self.failed(view.epoch, why.clone(), false)?;
                return Err(changed(view.epoch, why));
            }
        };
        info!(epoch = view.epoch, links = %comm.describe(), "epoch links formed");
        self.tell(FrontEvent::MeshUp { epoch: view.epoch });
        self.progress
            .entered(comm.epoch(), comm.rank(), comm.size());
        self.round_trips = RoundTrips::new(comm.size(), self.progress.window_span() as u64);
        self.comm = Some(comm);
        // The epoch's own set-up (device id, state) is not the first collective it resumed with.
        self.resumed = true;
        self.view = Some(view.clone());
        self.enter_device(rank, view.members.len())?;
        self.sync()?;
        let restored = self.memory.as_ref().map_or(0, |c| c.step);
        self.tell(FrontEvent::Entered {
            epoch: view.epoch,
            size: view.members.len(),
            rolled_back: self.step_hint.saturating_sub(restored),
            holds_final: self.finished,
        });
        self.resumed = false;
        info!(
            rank,
            size = view.members.len(),
            step = restored,
            "epoch entered"
        );
        Ok(())
    }

    /// The first operation of every epoch: agree on and distribute the state to resume from.
    fn sync(&mut self) -> Result<()> {
        failpoint::crash_point("sync", self.epoch());
        let disk = match (&self.memory, &self.store) {
            (None, Some(store)) => store
                .load_latest()
                .map_err(|e| GroupError::Internal(e.to_string()))?,
            _ => None,
        };
        let disk_held = disk.as_ref().map(|c| (c.step, c.is_final));
        let record = state::record(self.memory.as_ref(), disk_held, self.finished);
        let mut all = vec![[0u64; 5]; self.size()];
        self.allgather_words(&record, &mut all)?;
        let decision = state::decide(&all);
        self.finished = state::decided_final(&all, decision);
        match decision {
            Decision::Fresh | Decision::Keep { .. } => Ok(()),
            Decision::Broadcast {
                step,
                root,
                from_disk,
            } => {
                let mine = match (from_disk, &self.memory, disk) {
                    (true, _, Some(c)) => c.state,
                    (false, Some(c), _) => c.bytes.to_vec(),
                    _ => Vec::new(),
                };
                let mut len = [mine.len() as i64];
                self.broadcast_unchecked(&mut len, root)?;
                let mut bytes = mine;
                bytes.resize(len[0] as usize, 0);
                self.broadcast_unchecked(&mut bytes, root)?;
                info!(
                    step,
                    root,
                    bytes = bytes.len(),
                    from_disk,
                    "state distributed"
                );
                self.memory = Some(Committed::new(step, Arc::new(bytes)));
                Ok(())
            }
        }
    }

    /// Joiners are waiting: let the coordinator admit them and move to their epoch together
    /// (the plane keeps admission open for `GroupConfig::admit_wait`).
    fn admit(&mut self) -> Result<()> {
        let epoch = self.epoch();
        let closed = self.published.borrow().admissions_closed;
        self.tell(FrontEvent::Admit);
        let deadline = Instant::now() + self.config.admit_wait + REPORT_TIMEOUT;
        let newer = |p: &Published| p.view.as_ref().is_some_and(|v| v.epoch > epoch);
        let p = self.await_published(deadline, |p| p.admissions_closed > closed || newer(p));
        match newer(&p) {
            true => {
                let committed = self.memory.clone();
                self.comm = None;
                self.restore()?;
                // The new epoch may have been formed without this member first (a flapping
                // link) and moved on: then the caller's state is not the group's any more.
                match self.memory == committed {
                    true => Ok(()),
                    false => Err(changed(
                        self.epoch(),
                        "the group moved on while this member was out: restore".into(),
                    )),
                }
            }
            false => {
                info!("joiners were not admitted in time; going on");
                Ok(())
            }
        }
    }

    /// Allgather of one record of words per rank (the collectives carry them as i64).
    fn allgather_words<const N: usize>(
        &mut self,
        record: &[u64; N],
        all: &mut [[u64; N]],
    ) -> Result<()> {
        let send: &[i64] = bytemuck::cast_slice(record);
        self.allgather(send, bytemuck::cast_slice_mut(all.as_flattened_mut()))
    }

    /// Every rank's commit record, by an all-to-all that also carries the words measuring each
    /// link's round trip (see `rtt`).
    fn exchange_commit(&mut self, record: &[u64; 4]) -> Result<Vec<[u64; 4]>> {
        let (n, me, commit) = (self.size(), self.rank(), self.commits + 1);
        let _span = info_span!("alltoall", epoch = self.epoch(), count = n * 6).entered();
        let (ctl, epoch) = self.begin_op(5, n * std::mem::size_of::<[u64; 6]>())?;
        // In an epoch: `round_trips` was made for it, of its size (`enter`).
        let origin = self.clock_origin;
        let clock = move |at: Instant| at.saturating_duration_since(origin).as_nanos() as i64;
        let now = clock(Instant::now());
        let block = |p: usize| {
            let [sent, echo] = self.round_trips.outgoing(p, now, commit);
            [record[0], record[1], record[2], record[3], sent, echo]
        };
        let send: Vec<[u64; 6]> = (0..n).map(block).collect();
        let mut recv = vec![[0u64; 6]; n];
        let comm = self.comm.as_mut().expect("begin checked");
        let bytes = bytemuck::cast_slice_mut(recv.as_flattened_mut());
        let r = self.rt.block_on(comm.flat().alltoall_bytes(
            DType::U8,
            bytemuck::cast_slice(&send),
            bytes,
            &ctl,
        ));
        let arrived = self.end(epoch, r)?;
        for (p, (w, at)) in recv.iter().zip(arrived).enumerate() {
            if p != me {
                self.round_trips
                    .incoming(p, [w[4], w[5]], at.map(clock), commit);
            }
        }
        Ok(recv.iter().map(|w| [w[0], w[1], w[2], w[3]]).collect())
    }

    fn checkpoint_if_due(&mut self) -> Result<()> {
        match self.commits.is_multiple_of(self.config.checkpoint_every) {
            true => self.write_checkpoint(),
            false => Ok(()),
        }
    }

    /// Saves the held state (marked final once finished), if this member is its host's writer.
    fn write_checkpoint(&self) -> Result<()> {
        let (Some(store), Some(c), Some(view)) = (&self.store, &self.memory, &self.view) else {
            return Ok(());
        };
        if lifecycle::writes_checkpoints(view, self.rank()) {
            store
                .save(c.step, &c.bytes, self.finished)
                .map_err(|e| GroupError::Internal(e.to_string()))?;
        }
        Ok(())
    }
}

/// Why `epoch` is over for this member, if it is.
fn over(epoch: u64, p: &Published) -> Option<String> {
    if let Some(why) = &p.stopped {
        return Some(format!("membership stopped: {why}"));
    }
    (p.ended.as_ref())
        .filter(|(e, _)| *e >= epoch)
        .map(|(_, why)| why.clone())
}

fn changed(epoch: u64, reason: String) -> GroupError {
    GroupError::MembershipChanged { epoch, reason }
}

/// The device side's hooks (`crate::device` holds the rest).
impl Group {
    /// The device side, when configured.
    pub(crate) fn device_mut(&mut self) -> Option<&mut (dyn DeviceEpochs + 'static)> {
        self.device.as_deref_mut()
    }

    /// Gives a group without a device side one, for this epoch and the next: collective, so
    /// every member calls it at the same point (the C ABI does, at the first collective whose
    /// buffers are device memory). A no-op on a group that has one.
    pub fn enable_device(&mut self, spec: crate::device::DeviceSpec) -> Result<()> {
        if self.device.is_some() {
            return Ok(());
        }
        let _span = info_span!("enable_device", epoch = self.epoch(), spec = ?spec).entered();
        self.device = Some(spec.build(&self.config)?);
        self.config.device = Some(spec);
        let (rank, size) = (self.rank(), self.size());
        self.enter_device(rank, size)
    }

    /// Builds the new epoch's device communicator: rank 0 makes the unique id and broadcasts it
    /// on the epoch's (authenticated) mesh, with a status byte so that a failure on rank 0 ends
    /// every rank's wait; every rank creates its communicator and waits until it is ready,
    /// under the epoch's deadline and cancellation.
    fn enter_device(&mut self, rank: usize, size: usize) -> Result<()> {
        let Some(dev) = self.device.as_deref_mut() else {
            return Ok(());
        };
        dev.drop_epoch();
        let mut msg = [0u8; 1 + UNIQUE_ID_LEN];
        if rank == 0 {
            match dev.unique_id() {
                Ok(id) => {
                    msg[0] = 1;
                    msg[1..].copy_from_slice(&id);
                }
                Err(f) => {
                    let text = f.detail.as_bytes();
                    let n = text.len().min(UNIQUE_ID_LEN);
                    msg[1..1 + n].copy_from_slice(&text[..n]);
                }
            }
        }
        let (ctl, epoch) = self.begin()?;
        let comm = self.comm.as_mut().expect("begin checked");
        let r = self
            .rt
            .block_on(comm.flat().broadcast(&mut msg[..], 0, &ctl));
        self.end(epoch, r)?;
        if msg[0] != 1 {
            let why = String::from_utf8_lossy(&msg[1..]);
            return Err(GroupError::Internal(format!(
                "rank 0 could not make the device unique id: {}",
                why.trim_end_matches('\0')
            )));
        }
        let id: [u8; UNIQUE_ID_LEN] = msg[1..].try_into().expect("length");
        let dev = self.device.as_deref_mut().expect("checked above");
        let r = dev.install(&self.rt, &ctl, &id, rank, size, epoch);
        self.end(epoch, r)
    }

    /// Runs one device collective under the epoch's deadline and cancellation (see `begin`).
    pub(crate) fn device_op<R>(
        &mut self,
        name: &'static str,
        op: impl FnOnce(
            &mut dyn DeviceEpochs,
            &mut Communicator<Links>,
            &Executor,
            &Ctl,
        ) -> std::result::Result<R, CollectiveError>,
    ) -> Result<R> {
        if self.device.is_none() {
            return Err(GroupError::InvalidArgument(format!(
                "{name} on device memory: the group has no device backend (RINGRUN_DEVICE=cuda)"
            )));
        }
        let _span = info_span!("device", op = name, epoch = self.epoch()).entered();
        let (ctl, epoch) = self.begin_op(progress::kind_of(name), 0)?;
        let dev = self.device.as_deref_mut().expect("checked above");
        let host = self.comm.as_mut().expect("begin checked").flat();
        let r = op(dev, host, &self.rt, &ctl);
        self.end(epoch, r)
    }
}
