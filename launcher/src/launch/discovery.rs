//! `--host-discovery-script` with Horovod's semantics: an executable that prints one
//! `host:slots` line per available host (a bare `host` has `--slots-per-host` slots, 1). The launcher polls it
//! and grows or shrinks this host's workers to the slots the script gives it; a host missing from
//! the output has no slots. Shrinking sends SIGTERM, so a worker leaves the group gracefully.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Longest a discovery script may run.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(10);

pub(crate) struct Discovery {
    script: PathBuf,
    names: Vec<String>,
    /// Slots of a host listed without a count (horovodrun's --slots-per-host).
    default_slots: usize,
    interval: Duration,
    next: Instant,
}

impl Discovery {
    /// `names`: what this host may be called in the script's output.
    pub(crate) fn new(
        script: PathBuf,
        names: Vec<String>,
        default_slots: usize,
        interval: Duration,
    ) -> Discovery {
        Discovery {
            script,
            names,
            default_slots,
            interval,
            next: Instant::now(),
        }
    }

    /// True once per interval.
    pub(crate) fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.interval;
        true
    }

    /// Runs the script; this host's slots (0 if it is not listed).
    pub(crate) fn slots(&self) -> Result<usize> {
        let mut child = Command::new(&self.script)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("running {}", self.script.display()))?;
        let deadline = Instant::now() + SCRIPT_TIMEOUT;
        while child.try_wait()?.is_none() {
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{} ran longer than {SCRIPT_TIMEOUT:?}",
                    self.script.display()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let out = child.wait_with_output()?;
        if !out.status.success() {
            bail!("{} failed: {}", self.script.display(), out.status);
        }
        parse(
            &String::from_utf8_lossy(&out.stdout),
            &self.names,
            self.default_slots,
        )
    }
}

/// This host's slots in a discovery script's output (`default_slots` for a bare host).
pub(crate) fn parse(output: &str, names: &[String], default_slots: usize) -> Result<usize> {
    let mut slots = 0;
    for line in output
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (host, n) = match line.rsplit_once(':') {
            Some((h, n)) => (
                h,
                n.parse::<usize>()
                    .with_context(|| format!("bad line {line:?}"))?,
            ),
            None => (line, default_slots),
        };
        if names.iter().any(|name| name == host) {
            slots += n;
        }
    }
    Ok(slots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_this_hosts_slots() {
        let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
        assert_eq!(parse("a:4\nlocalhost:3\nb\n", &names, 1).unwrap(), 3);
        assert_eq!(parse("# none\n127.0.0.1\n", &names, 1).unwrap(), 1);
        assert_eq!(
            parse("127.0.0.1\n", &names, 4).unwrap(),
            4,
            "--slots-per-host"
        );
        assert_eq!(parse("a:2\n", &names, 1).unwrap(), 0);
        assert!(parse("localhost:x\n", &names, 1).is_err());
    }
}
