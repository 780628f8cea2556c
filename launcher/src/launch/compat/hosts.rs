//! horovodrun's `-np`, `-H host:slots,...` and `--hostfile`: ringrun starts this host's workers
//! only, so the line is run on every host and each launcher takes its own share: hosts fill in
//! order (ranks 0..slots on the first host, and so on) until `-np` processes are placed.

use super::{Facts, HOSTS_PORT, Key, Rewritten, Walked};

/// Adds this host's share of a horovodrun line to `out`.
pub(super) fn derive(w: &Walked, facts: &Facts, out: &mut Rewritten) -> Result<(), String> {
    let np = match w.value(Key::NumProc) {
        Some(v) => Some(
            v.parse::<usize>()
                .map_err(|_| format!("-np {v}: not a number"))?,
        ),
        None => None,
    };
    let list = match (w.value(Key::Hosts), w.value(Key::Hostfile)) {
        (Some(h), _) => Some(parse_hosts(h)?),
        (None, Some(f)) => Some(parse_hostfile(&(facts.read)(f)?)?),
        (None, None) => None,
    };
    let discovery = w.given("--host-discovery-script").is_some();
    let Some(list) = list else {
        if let Some(np) = np {
            // Elastic (a discovery script): -np is the size training starts at.
            let (flag, given) = match discovery {
                true => ("--min-np", w.given("--min-np")),
                false => ("--nproc-per-node", w.given("--nproc-per-node")),
            };
            if given.is_none() {
                out.args.extend([flag.to_string(), np.to_string()]);
            }
        }
        return Ok(());
    };
    let total: usize = list.iter().map(|(_, s)| s).sum();
    let np = np.unwrap_or(total);
    if np > total {
        return Err(format!("-np {np}: the hosts have only {total} slot(s)"));
    }
    // With --bind, this host is the entry of that address (several "hosts" can share a
    // machine on loopback); else the first entry naming this machine.
    let bind = w.native("--bind");
    let k = list
        .iter()
        .position(|(h, _)| match bind {
            Some(b) => h == b,
            None => (facts.is_local)(h),
        })
        .ok_or_else(|| {
            format!(
                "none of the hosts ({}) is this host: ringrun starts this host's workers only, \
                 so run the same line on every host",
                list.iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>()
                    .join(",")
            )
        })?;
    let before: usize = list[..k].iter().map(|(_, s)| s).sum();
    let here = list[k].1.min(np.saturating_sub(before));
    if here == 0 {
        return Err(format!(
            "-np {np} fills the hosts before {}: no worker runs here",
            list[k].0
        ));
    }
    // Hosts that get at least one process.
    let mut used = Vec::new();
    let mut left = np;
    for (h, s) in &list {
        if left == 0 {
            break;
        }
        used.push(h.clone());
        left = left.saturating_sub(*s);
    }
    out.args
        .extend(["--nproc-per-node".into(), here.to_string()]);
    if used.len() == 1 {
        return Ok(());
    }
    if list[..used.len()].iter().any(|(_, s)| *s != here) {
        out.notes.push(format!(
            "hosts of different slot counts: RANK is node rank × {here} + local rank here; \
             the runtime's ranks are exact"
        ));
    }
    let port = w
        .native("--port")
        .map_or(HOSTS_PORT.to_string(), str::to_string);
    if w.native("--seeds").is_none() {
        let seeds: Vec<String> = used.iter().map(|h| format!("{h}:{port}")).collect();
        out.args.extend(["--seeds".into(), seeds.join(",")]);
    }
    if w.native("--port").is_none() {
        out.args.extend(["--port".into(), port]);
    }
    if w.native("--bind").is_none() {
        let me = &list[k].0;
        let bind = match me.parse::<std::net::IpAddr>() {
            Ok(ip) => Some(ip),
            Err(_) => (facts.route_from)(me),
        };
        let bind = bind.ok_or_else(|| format!("{me}: no address of this host"))?;
        out.args.extend(["--bind".into(), bind.to_string()]);
    }
    out.args.extend([
        "--node-rank".into(),
        k.to_string(),
        "--nnodes".into(),
        used.len().to_string(),
    ]);
    Ok(())
}

/// `host1:2,host2:4,host3` (a bare host has one slot).
pub(super) fn parse_hosts(s: &str) -> Result<Vec<(String, usize)>, String> {
    s.split(',')
        .filter(|h| !h.trim().is_empty())
        .map(|h| match h.trim().rsplit_once(':') {
            Some((host, n)) => n
                .parse()
                .map(|n| (host.to_string(), n))
                .map_err(|_| format!("-H {s}: {h}: expected host:slots")),
            None => Ok((h.trim().to_string(), 1)),
        })
        .collect()
}

/// Horovod's host file: `host slots=N` per line (`#` comments; a bare host has one slot).
pub(super) fn parse_hostfile(text: &str) -> Result<Vec<(String, usize)>, String> {
    let mut out = Vec::new();
    for line in text
        .lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
    {
        let mut words = line.split_whitespace();
        let Some(host) = words.next() else { continue };
        let slots = match words.find_map(|w| w.strip_prefix("slots=")) {
            Some(n) => n
                .parse()
                .map_err(|_| format!("host file: {line:?}: expected `host slots=N`"))?,
            None => 1,
        };
        out.push((host.to_string(), slots));
    }
    Ok(out)
}
