//! `ringrun launch` reads torchrun's and horovodrun's command lines as they are: [`rewrite`]
//! turns one into ringrun's own (`--nproc_per_node=2 train.py --lr 0.1` becomes
//! `--nproc-per-node 2 -- python3 -u train.py --lr 0.1`) before clap parses it, and says on
//! stderr what it ignored. It is pure: what it needs to know about the host comes in [`Facts`].
//!
//! The walk stops at the program (the first word that is not an option or an option's value,
//! or the word after `--`): everything from there on is the program's, untouched.

mod facts;
mod hosts;
mod table;
#[cfg(test)]
mod tests;

use std::{collections::HashMap, net::IpAddr};

pub(crate) use facts::gather;
use table::{Act, Key};

/// The launch help's section on torchrun's and horovodrun's forms.
pub(crate) const HELP: &str = "\
Coming from torchrun / horovodrun (`torchrun ARGS` = `ringrun launch ARGS` = `ringrun torchrun ARGS`):
  Options are taken with dashes or underscores (--nproc_per_node), `=` or a space, or a
  unique prefix. The program follows the options, with or without `--`; its own arguments are
  passed untouched. PROG.py runs as `$PYTHON_EXEC|$PYTHON|python3 -u PROG.py`; -m/--module MOD
  as `python3 -u -m MOD`; --no-python runs the program as given.
  --nproc-per-node N|auto|cpu|gpu   workers here (auto: GPUs, else CPUs)
  --nnodes MIN[:MAX], --node-rank K  hosts; this host's index (rank 0's host may omit it)
  --rdzv-endpoint HOST[:PORT]        with --nnodes > 1: every launcher's seed HOST:PORT,
  --master-addr H --master-port P    membership port PORT, and MASTER_ADDR:MASTER_PORT
  --rdzv-backend c10d|static         (etcd, etcd-v2: not available; use c10d)
  --rdzv-id ID                       --run-id ID
  --standalone                       a job on this host only
  --local-addr ADDR                  --bind ADDR
  --max-restarts, --log-dir, -r/--redirects, -t/--tee, --local-ranks-filter: honoured
  -np N, -H/--hosts H:S,..., --hostfile F   this host's share of N (hosts fill in order);
                                     run the line on every host (no ssh)
  --min-np/--min-num-proc, --max-np/--max-num-proc, --host-discovery-script,
  --slots-per-host, --start-timeout, --output-filename (= --log-dir), --reset-limit
  (= --max-restarts), --verbose: honoured
  Every other torchrun / horovodrun option is accepted and ignored, with a note on stderr.
  Multi-host jobs need the same RINGRUN_SECRET (or --secret-file) on every host.
Exit codes: 0 success, 1 a worker failed (no restart allowed), 2 bad command line,
  3 restart budget spent, 4 the launcher could not run the job, 128+N stopped by signal N.";

/// torchrun's default rendezvous port (c10d) and master port (static).
const C10D_PORT: u16 = 29400;
const STATIC_PORT: u16 = 29500;
/// The launchers' membership port of a multi-host horovodrun line (as under Slurm).
const HOSTS_PORT: u16 = 29450;

/// What the rewrite needs to know about this host.
pub(crate) struct Facts<'a> {
    /// The interpreter for `.py` programs and `-m`: `$PYTHON_EXEC`, else `$PYTHON`, else
    /// `python3` (torchrun runs `sys.executable`).
    pub(crate) python: String,
    pub(crate) cpus: usize,
    /// GPUs visible to this process.
    pub(crate) gpus: usize,
    /// Whether a host name or address is this host.
    pub(crate) is_local: &'a dyn Fn(&str) -> bool,
    /// The local address the route to a host leaves from.
    pub(crate) route_from: &'a dyn Fn(&str) -> Option<IpAddr>,
    /// Reads a file (a horovodrun host file).
    pub(crate) read: &'a dyn Fn(&str) -> Result<String, String>,
}

/// ringrun's own command line, and what to say about the rewrite.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Rewritten {
    pub(crate) args: Vec<String>,
    /// One line each: options accepted and ignored, values resolved.
    pub(crate) notes: Vec<String>,
    /// horovodrun's `--verbose`: the launcher logs at `info`.
    pub(crate) verbose: bool,
    /// A torchrun or horovodrun form was read (the rewritten line is worth printing).
    pub(crate) changed: bool,
}

/// ringrun's own long options (`--name` → takes a value), from clap.
pub(crate) type Native = HashMap<String, bool>;

/// ringrun's own options of `cmd` (a `ringrun launch` clap command).
pub(crate) fn native_options(cmd: &clap::Command) -> Native {
    let mut out = Native::new();
    for a in cmd.get_arguments() {
        let takes = a.get_action().takes_values();
        for l in a.get_long_and_visible_aliases().into_iter().flatten() {
            out.insert(format!("--{l}"), takes);
        }
        for l in a.get_all_aliases().into_iter().flatten() {
            out.insert(format!("--{l}"), takes);
        }
    }
    out
}

/// The command line after the options, and the options as read.
#[derive(Debug, Default)]
struct Walked {
    /// ringrun's own options, canonical spelling, `=` split off.
    native: Vec<(String, Option<String>)>,
    /// Compatibility options: (canonical name, values), in order.
    compat: Vec<(&'static table::Opt, Vec<String>)>,
    program: Vec<String>,
    /// Tokens left for clap to judge (unknown options, help).
    passthrough: Vec<String>,
}

impl Walked {
    fn key(&self, k: Key) -> Option<&[String]> {
        self.compat
            .iter()
            .rev()
            .find(|(o, _)| o.act == Act::Key(k))
            .map(|(_, v)| v.as_slice())
    }
    fn value(&self, k: Key) -> Option<&str> {
        self.key(k).and_then(|v| v.first()).map(String::as_str)
    }
    fn native(&self, name: &str) -> Option<&str> {
        self.native
            .iter()
            .rev()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_deref().unwrap_or(""))
    }
    /// A ringrun option, given natively or as a compatibility spelling of it.
    fn given(&self, name: &str) -> Option<String> {
        let same = self
            .compat
            .iter()
            .rev()
            .find(|(o, _)| matches!(o.act, Act::Same(n) if n == name))
            .and_then(|(_, v)| v.first().cloned());
        same.or_else(|| self.native(name).map(str::to_string))
    }
}

/// Rewrites `args` (what follows `ringrun launch`) into ringrun's own command line.
pub(crate) fn rewrite(
    args: &[String],
    native: &Native,
    facts: &Facts,
) -> Result<Rewritten, String> {
    let w = walk(args, native)?;
    let mut out = Rewritten::default();
    for (name, value) in &w.native {
        out.args.push(name.clone());
        out.args.extend(value.clone());
    }
    for (opt, values) in &w.compat {
        out.changed = true;
        match opt.act {
            Act::Same(to) => {
                out.args.push(to.to_string());
                out.args.extend(values.iter().cloned());
            }
            Act::Ignore(why) => out
                .notes
                .push(format!("{} accepted and ignored: {why}", opt.names[0])),
            Act::Key(_) => {}
        }
    }
    out.verbose = w.key(Key::Verbose).is_some();
    derive_torchrun(&w, facts, &mut out)?;
    hosts::derive(&w, facts, &mut out)?;
    out.args.extend(w.passthrough.iter().cloned());
    let program = program(&w, facts, &mut out)?;
    if !program.is_empty() {
        out.args.push("--".into());
        out.args.extend(program);
    }
    Ok(out)
}

/// Splits the options from the program.
fn walk(args: &[String], native: &Native) -> Result<Walked, String> {
    let mut w = Walked::default();
    let mut i = 0;
    while i < args.len() {
        let tok = &args[i];
        i += 1;
        if tok == "--" {
            w.program = args[i..].to_vec();
            return Ok(w);
        }
        if !tok.starts_with('-') || tok == "-" {
            w.program = args[i - 1..].to_vec();
            return Ok(w);
        }
        let (name, inline) = match tok.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (tok.clone(), None),
        };
        let name = prefixed(&spelling(&name), native);
        let found = match table::find(&name) {
            Some(o) => Some((o, None)),
            None => attached_short(&name).map(|o| (o, Some(name[2..].to_string()))),
        };
        if let Some((opt, attached)) = found {
            let mut values: Vec<String> = inline.into_iter().chain(attached).collect();
            while values.len() < opt.arity {
                let v = args
                    .get(i)
                    .ok_or_else(|| format!("{} needs {} value(s)", opt.names[0], opt.arity))?;
                values.push(v.clone());
                i += 1;
            }
            w.compat.push((opt, values));
            continue;
        }
        match native.get(&name) {
            Some(true) => {
                let value = match inline {
                    Some(v) => v,
                    None => {
                        i += 1;
                        args.get(i - 1)
                            .cloned()
                            .ok_or_else(|| format!("{name} needs a value"))?
                    }
                };
                w.native.push((name, Some(value)));
            }
            Some(false) => w.native.push((name, None)),
            // Unknown, or help: clap says what it thinks of it.
            None => w.passthrough.push(tok.clone()),
        }
    }
    Ok(w)
}

/// `--foo_bar` → `--foo-bar` (torchrun takes both); single-dash words stay as they are.
fn spelling(name: &str) -> String {
    match name.strip_prefix("--") {
        Some(rest) => format!("--{}", rest.replace('_', "-")),
        None => name.to_string(),
    }
}

/// A short option with its value attached (`-r3`, `-Hhost:2`).
fn attached_short(name: &str) -> Option<&'static table::Opt> {
    if name.starts_with("--") || name.len() <= 2 {
        return None;
    }
    table::find(name.get(..2)?).filter(|o| o.arity == 1)
}

/// argparse takes a unique prefix of a long option (`--nproc` for `--nproc-per-node`); so do
/// we, over torchrun's, horovodrun's and ringrun's own names.
fn prefixed(name: &str, native: &Native) -> String {
    if table::find(name).is_some() || native.contains_key(name) || !name.starts_with("--") {
        return name.to_string();
    }
    let longs = table::OPTIONS
        .iter()
        .flat_map(|o| o.names.iter().copied())
        .chain(native.keys().map(String::as_str))
        .filter(|n| n.starts_with("--") && n.starts_with(name));
    let mut hits: Vec<&str> = longs.collect();
    hits.sort_unstable();
    hits.dedup();
    match hits.as_slice() {
        [one] if name.len() > 3 => one.to_string(),
        _ => name.to_string(),
    }
}

/// torchrun's sizes, rendezvous and master address in ringrun's terms.
fn derive_torchrun(w: &Walked, facts: &Facts, out: &mut Rewritten) -> Result<(), String> {
    if let Some(v) = w.value(Key::NprocPerNode) {
        let n = nproc(v, facts)?;
        if v.parse::<usize>().is_err() {
            out.notes
                .push(format!("--nproc-per-node {v}: {n} worker(s)"));
        }
        out.args.extend(["--nproc-per-node".into(), n.to_string()]);
    }
    match w.value(Key::RdzvBackend) {
        None | Some("c10d" | "static") => {}
        Some(b @ ("etcd" | "etcd-v2")) => {
            return Err(format!(
                "--rdzv-backend {b}: ringrun has no etcd rendezvous; use --rdzv-backend c10d \
                 (or static) with --rdzv-endpoint HOST:PORT of one of the hosts: the hosts' \
                 launchers meet there"
            ));
        }
        Some(b) => {
            return Err(format!(
                "--rdzv-backend {b}: expected c10d or static (the endpoint becomes the \
                 launchers' membership seed)"
            ));
        }
    }
    let standalone = w.key(Key::Standalone).is_some();
    let endpoint = endpoint(w)?;
    let (_, max_nodes) = nnodes(w.given("--nnodes").as_deref())?;
    if standalone {
        if endpoint.is_some() {
            out.notes
                .push("--standalone: a job on this host; rendezvous options ignored".into());
        }
        return Ok(());
    }
    if max_nodes <= 1 {
        if let Some(h) = w.value(Key::MasterAddr) {
            out.args.extend(["--master-addr".into(), h.to_string()]);
        }
        if let Some(p) = w.value(Key::MasterPort) {
            out.args.extend(["--master-port".into(), p.to_string()]);
        }
        if let Some(l) = w.value(Key::LocalAddr) {
            out.args.extend(["--bind".into(), local_addr(l, facts)?]);
        }
        return Ok(());
    }
    let (host, port) = endpoint.unwrap_or_else(|| ("127.0.0.1".into(), STATIC_PORT));
    multi_node(w, facts, &host, port, out)
}

/// A job of several hosts meets at `host:port`: the seed of every host's launcher, whose
/// membership port is `port`; `MASTER_ADDR:MASTER_PORT` is the same address.
fn multi_node(
    w: &Walked,
    facts: &Facts,
    host: &str,
    port: u16,
    out: &mut Rewritten,
) -> Result<(), String> {
    if w.native("--seeds").is_none() {
        out.args
            .extend(["--seeds".into(), format!("{host}:{port}")]);
    }
    if w.native("--port").is_none() {
        out.args.extend(["--port".into(), port.to_string()]);
    }
    if w.native("--bind").is_none() {
        let bind = match w.value(Key::LocalAddr) {
            Some(l) => local_addr(l, facts)?,
            None => (facts.route_from)(host)
                .ok_or_else(|| format!("no route to the rendezvous host {host}"))?
                .to_string(),
        };
        out.args.extend(["--bind".into(), bind]);
    }
    if w.given("--node-rank").is_none() {
        if !(facts.is_local)(host) {
            return Err(format!(
                "a job of several hosts needs this host's --node-rank (0 to nnodes-1): ringrun \
                 has no rendezvous to assign it (node rank 0 is the host of {host})"
            ));
        }
        out.notes.push(format!(
            "node rank 0: this host is the rendezvous host {host}"
        ));
        out.args.extend(["--node-rank".into(), "0".into()]);
    }
    let master_host = w.value(Key::MasterAddr).unwrap_or(host);
    let master_port = w
        .value(Key::MasterPort)
        .map_or(port.to_string(), str::to_string);
    out.args.extend([
        "--master-addr".into(),
        master_host.to_string(),
        "--master-port".into(),
        master_port,
    ]);
    Ok(())
}

/// The rendezvous address: `--rdzv-endpoint HOST[:PORT]`, else `--master-addr`/`--master-port`.
fn endpoint(w: &Walked) -> Result<Option<(String, u16)>, String> {
    if let Some(e) = w.value(Key::RdzvEndpoint) {
        if e.is_empty() {
            return Ok(None);
        }
        return split_host_port(e, C10D_PORT).map(Some);
    }
    let (addr, port) = (w.value(Key::MasterAddr), w.value(Key::MasterPort));
    if addr.is_none() && port.is_none() {
        return Ok(None);
    }
    let port = match port {
        Some(p) => p
            .parse()
            .map_err(|_| format!("--master-port {p}: not a port"))?,
        None => STATIC_PORT,
    };
    Ok(Some((addr.unwrap_or("127.0.0.1").to_string(), port)))
}

/// `host:port`, `[v6]:port`, or a bare host (`default` port).
fn split_host_port(s: &str, default: u16) -> Result<(String, u16), String> {
    let bad = || format!("{s}: expected HOST[:PORT]");
    if let Some(rest) = s.strip_prefix('[') {
        let (h, p) = rest.split_once(']').ok_or_else(bad)?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => default,
        };
        return Ok((h.to_string(), port));
    }
    match s.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => Ok((h.to_string(), p.parse().map_err(|_| bad())?)),
        _ => Ok((s.to_string(), default)),
    }
}

/// `--nnodes MIN[:MAX]` → (MIN, MAX); 1 host when absent.
fn nnodes(s: Option<&str>) -> Result<(usize, usize), String> {
    let bad = || format!("--nnodes {}: expected N or MIN:MAX", s.unwrap_or(""));
    let Some(s) = s else { return Ok((1, 1)) };
    let (min, max) = match s.split_once(':') {
        Some((a, b)) => (a.parse().map_err(|_| bad())?, b.parse().map_err(|_| bad())?),
        None => {
            let n = s.parse().map_err(|_| bad())?;
            (n, n)
        }
    };
    Ok((min, max))
}

/// `--nproc-per-node N|auto|cpu|gpu`, as torchrun resolves it.
fn nproc(v: &str, facts: &Facts) -> Result<usize, String> {
    if let Ok(n) = v.parse() {
        return Ok(n);
    }
    match v {
        "cpu" => Ok(facts.cpus),
        "gpu" | "cuda" if facts.gpus == 0 => {
            Err(format!("--nproc-per-node {v}: no GPU is visible"))
        }
        "gpu" | "cuda" => Ok(facts.gpus),
        "auto" if facts.gpus > 0 => Ok(facts.gpus),
        "auto" => Ok(facts.cpus),
        _ => Err(format!(
            "--nproc-per-node {v}: expected a number, auto, cpu or gpu"
        )),
    }
}

/// `--local-addr`: an address, or a name resolved to this host's address for it.
fn local_addr(l: &str, facts: &Facts) -> Result<String, String> {
    if l.parse::<IpAddr>().is_ok() {
        return Ok(l.to_string());
    }
    (facts.route_from)(l)
        .map(|a| a.to_string())
        .ok_or_else(|| format!("--local-addr {l}: not an address of this host"))
}

/// The worker command: `.py` runs with Python, `-m` runs a module, `--no-python` as given.
fn program(w: &Walked, facts: &Facts, out: &mut Rewritten) -> Result<Vec<String>, String> {
    let module = w.key(Key::Module).is_some();
    let no_python = w.key(Key::NoPython).is_some();
    if module && no_python {
        return Err("--module and --no-python cannot be used together (as in torchrun)".into());
    }
    let Some(first) = w.program.first() else {
        return Ok(Vec::new());
    };
    let python = |rest: &[String], m: bool| {
        let mut cmd = vec![facts.python.clone(), "-u".into()];
        if m {
            cmd.push("-m".into());
        }
        cmd.extend(rest.iter().cloned());
        cmd
    };
    let cmd = if module {
        python(&w.program, true)
    } else if no_python {
        w.program.clone()
    } else if first.ends_with(".py") || w.key(Key::RunPath).is_some() {
        python(&w.program, false)
    } else {
        w.program.clone()
    };
    if cmd != w.program {
        out.changed = true;
    }
    Ok(cmd)
}
