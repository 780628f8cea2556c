//! torchrun's `-r/--redirects`, `-t/--tee` and `--local-ranks-filter`: which workers' output
//! reaches the console. Every line still goes to the worker's log file under `--log-dir`.
//!
//! A spec is `0` (none), `1` (stdout), `2` (stderr) or `3` (both) for every local rank, or
//! `LOCAL_RANK:N,...` per local rank, as torchrun takes it.

use std::collections::BTreeMap;

use anyhow::{Context, Result, bail};

/// Streams chosen per local rank.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Spec {
    all: u8,
    per: BTreeMap<usize, u8>,
}

impl Spec {
    pub(crate) fn parse(s: &str) -> Result<Spec> {
        let bits = |v: &str| -> Result<u8> {
            match v.trim().parse::<u8>() {
                Ok(n @ 0..=3) => Ok(n),
                _ => bail!("{v:?}: expected 0 (none), 1 (stdout), 2 (stderr) or 3 (both)"),
            }
        };
        if !s.contains(':') {
            return Ok(Spec {
                all: bits(s)?,
                per: BTreeMap::new(),
            });
        }
        let mut per = BTreeMap::new();
        for part in s.split(',').filter(|p| !p.trim().is_empty()) {
            let (rank, v) = part
                .split_once(':')
                .with_context(|| format!("{part:?}: expected LOCAL_RANK:N"))?;
            let rank = rank
                .trim()
                .parse()
                .with_context(|| format!("{part:?}: bad local rank"))?;
            per.insert(rank, bits(v)?);
        }
        Ok(Spec { all: 0, per })
    }

    fn get(&self, local_rank: usize) -> u8 {
        *self.per.get(&local_rank).unwrap_or(&self.all)
    }

    fn any(&self) -> bool {
        self.all != 0 || self.per.values().any(|v| *v != 0)
    }
}

/// What the launcher prints of its workers' output.
#[derive(Clone, Debug, Default)]
pub(crate) struct Console {
    /// Streams that go to the log files only.
    pub(crate) redirects: Spec,
    /// Streams that go to both (ringrun's way whenever there is a log directory).
    pub(crate) tee: Spec,
    /// Local ranks shown on the console (all if `None`).
    pub(crate) ranks: Option<Vec<usize>>,
}

impl Console {
    pub(crate) fn new(
        redirects: Option<&str>,
        tee: Option<&str>,
        ranks: Option<&str>,
    ) -> Result<Console> {
        let spec = |s: Option<&str>, what: &str| -> Result<Spec> {
            s.map(Spec::parse)
                .transpose()
                .with_context(|| format!("--{what}"))
                .map(Option::unwrap_or_default)
        };
        let ranks = ranks
            .map(|r| {
                r.split(',')
                    .filter(|x| !x.trim().is_empty())
                    .map(|x| x.trim().parse::<usize>())
                    .collect::<Result<Vec<_>, _>>()
                    .with_context(|| format!("--local-ranks-filter {r}: expected 0,1,..."))
            })
            .transpose()?;
        Ok(Console {
            redirects: spec(redirects, "redirects")?,
            tee: spec(tee, "tee")?,
            ranks,
        })
    }

    /// Whether a line of this worker's stdout (or stderr) is printed.
    pub(crate) fn shows(&self, local_rank: usize, stderr: bool) -> bool {
        let bit = if stderr { 2 } else { 1 };
        let listed = self.ranks.as_ref().is_none_or(|r| r.contains(&local_rank));
        listed && self.redirects.get(local_rank) & bit == 0
    }

    /// Whether the output must be written to files (a log directory is needed).
    pub(crate) fn needs_files(&self) -> bool {
        self.redirects.any() || self.tee.any()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torchrun_specs_choose_the_console_streams() {
        let c = Console::new(Some("3"), None, None).unwrap();
        assert!(!c.shows(0, false) && !c.shows(5, true));
        assert!(c.needs_files());
        let c = Console::new(Some("0:1,1:2"), Some("2"), None).unwrap();
        assert!(!c.shows(0, false) && c.shows(0, true));
        assert!(c.shows(1, false) && !c.shows(1, true));
        assert!(c.shows(2, false) && c.shows(2, true));
        let c = Console::new(None, None, Some("0,2")).unwrap();
        assert!(c.shows(0, false) && !c.shows(1, false) && c.shows(2, true));
        assert!(!c.needs_files());
        let c = Console::default();
        assert!(c.shows(7, true) && !c.needs_files());
        for bad in ["4", "x", "0:9", "a:1"] {
            assert!(Console::new(Some(bad), None, None).is_err(), "{bad}");
        }
        assert!(Console::new(None, None, Some("0,x")).is_err());
    }
}
