//! The job secret and job id, as every `ringrun` command reads them.
//!
//! The secret is a string: the trimmed contents of `--secret-file`, else `$RINGRUN_SECRET`.
//! Every layer derives its own keys from those bytes under its own label (the transports'
//! handshake and QUIC keys, the membership MAC), so one secret serves the whole job. A job
//! started without one gets 32 random bytes, hex-encoded, handed to its workers in the
//! environment. The job id (`--job-id`, default `ringrun`) keeps two jobs that share a secret
//! apart.

use std::path::Path;

use anyhow::{Context, Result, bail};
use ring::rand::{SecureRandom, SystemRandom};

/// Environment variable holding the job secret.
pub(crate) const SECRET_ENV: &str = "RINGRUN_SECRET";
/// Shortest secret accepted (the membership MAC's minimum).
pub(crate) const MIN_LEN: usize = ringrun_membership::MIN_SECRET_LEN;

/// Reads the secret from `file`, else the environment; `None` if neither is set.
pub(crate) fn from_file_or_env(file: Option<&Path>) -> Result<Option<Vec<u8>>> {
    let raw = match file {
        Some(path) => std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
        None => match std::env::var(SECRET_ENV) {
            Ok(s) => s.into_bytes(),
            Err(_) => return Ok(None),
        },
    };
    let secret = raw.trim_ascii().to_vec();
    if secret.len() < MIN_LEN {
        bail!(
            "the job secret must be at least {MIN_LEN} bytes (it has {})",
            secret.len()
        );
    }
    Ok(Some(secret))
}

/// The configured secret, or a fresh random one for a job that lives on this host only.
pub(crate) fn or_random(file: Option<&Path>) -> Result<Vec<u8>> {
    if let Some(s) = from_file_or_env(file)? {
        return Ok(s);
    }
    let mut bytes = [0u8; 32];
    SystemRandom::new()
        .fill(&mut bytes)
        .map_err(|_| anyhow::anyhow!("no system randomness"))?;
    Ok(bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<String>()
        .into_bytes())
}

/// The 64-bit job id of a run id string.
pub(crate) fn job_id(run_id: &str) -> ringrun_membership::JobId {
    ringrun_membership::JobId::from_run_id(run_id)
}
