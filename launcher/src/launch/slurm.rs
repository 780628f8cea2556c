//! Seeds from Slurm's environment: inside an allocation, every host's launcher listens on the
//! same port, so the expanded node list *is* the seed list; the node index is `SLURM_NODEID`
//! and the run id `SLURM_JOB_ID`.

use anyhow::{Result, bail};

/// What a launcher takes from Slurm.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Slurm {
    pub(crate) hosts: Vec<String>,
    pub(crate) node_rank: usize,
    pub(crate) job_id: String,
    pub(crate) tasks_per_node: Option<usize>,
}

/// Reads the allocation from `var` (the environment, or a test's map); `None` outside Slurm.
pub(crate) fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Option<Slurm>> {
    let Some(list) = var("SLURM_JOB_NODELIST").or_else(|| var("SLURM_NODELIST")) else {
        return Ok(None);
    };
    let node_rank = var("SLURM_NODEID").map_or(Ok(0), |v| v.parse())?;
    let tasks_per_node =
        var("SLURM_NTASKS_PER_NODE").and_then(|v| v.split('(').next().and_then(|n| n.parse().ok()));
    Ok(Some(Slurm {
        hosts: expand(&list)?,
        node_rank,
        job_id: var("SLURM_JOB_ID").unwrap_or_else(|| "slurm".into()),
        tasks_per_node,
    }))
}

/// Expands a Slurm host list: `node[01-03,07],gpu5` → node01 node02 node03 node07 gpu5.
pub(crate) fn expand(list: &str) -> Result<Vec<String>> {
    let mut hosts = Vec::new();
    for item in split_top(list) {
        match item.split_once('[') {
            None => hosts.push(item.to_string()),
            Some((prefix, rest)) => {
                let Some((ranges, suffix)) = rest.split_once(']') else {
                    bail!("unbalanced brackets in {item:?}");
                };
                for range in ranges.split(',') {
                    let (lo, hi) = range.split_once('-').unwrap_or((range, range));
                    let width = lo.len();
                    let (a, b): (u64, u64) = (lo.parse()?, hi.parse()?);
                    if b < a || b - a > 100_000 {
                        bail!("bad range {range:?} in {item:?}");
                    }
                    hosts.extend((a..=b).map(|n| format!("{prefix}{n:0width$}{suffix}")));
                }
            }
        }
    }
    Ok(hosts)
}

/// Splits at commas outside brackets.
fn split_top(list: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0);
    for (i, c) in list.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(&list[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&list[start..]);
    parts.into_iter().filter(|p| !p.is_empty()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expands_host_lists() {
        assert_eq!(
            expand("node[01-03,07],gpu5,r[8-10]x").unwrap(),
            [
                "node01", "node02", "node03", "node07", "gpu5", "r8x", "r9x", "r10x"
            ]
        );
        assert!(expand("n[1-").is_err());
    }

    #[test]
    fn reads_the_allocation() {
        let env = |k: &str| match k {
            "SLURM_JOB_NODELIST" => Some("h[1-2]".to_string()),
            "SLURM_NODEID" => Some("1".to_string()),
            "SLURM_JOB_ID" => Some("77".to_string()),
            "SLURM_NTASKS_PER_NODE" => Some("4(x2)".to_string()),
            _ => None,
        };
        let s = from_env(env).unwrap().unwrap();
        assert_eq!(s.hosts, ["h1", "h2"]);
        assert_eq!(
            (s.node_rank, s.job_id.as_str(), s.tasks_per_node),
            (1, "77", Some(4))
        );
        assert_eq!(from_env(|_| None).unwrap(), None);
    }
}
