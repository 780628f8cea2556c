//! The local bench's address exchange: the parent listens, every child reports its rank and
//! data-plane address, and once all have arrived each child gets the full list.
//!
//! Only addresses travel here; the data-plane connections themselves are authenticated with the
//! job secret, so a stranger reporting a false address cannot join the mesh.

use std::{
    io::{BufRead, BufReader, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// Parent side: collects `n` reports on `listener` before `deadline`, answers every child.
pub(crate) fn serve(
    listener: &TcpListener,
    n: usize,
    deadline: Instant,
) -> Result<Vec<SocketAddr>> {
    listener.set_nonblocking(true)?;
    let mut addrs: Vec<Option<SocketAddr>> = vec![None; n];
    let mut children = Vec::new();
    while children.len() < n {
        if Instant::now() > deadline {
            let missing: Vec<usize> = (0..n).filter(|r| addrs[*r].is_none()).collect();
            bail!("ranks {missing:?} did not report for the bench within the start-up deadline");
        }
        let stream = match listener.accept() {
            Ok((s, _)) => s,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(2));
                continue;
            }
            Err(e) => return Err(e).context("rendezvous accept"),
        };
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut line = String::new();
        BufReader::new(&stream).read_line(&mut line)?;
        let (rank, addr) =
            parse_report(&line, n).with_context(|| format!("bad report {line:?}"))?;
        if addrs[rank].replace(addr).is_some() {
            bail!("rank {rank} reported twice");
        }
        children.push(stream);
    }
    let list: Vec<SocketAddr> = addrs
        .into_iter()
        .map(|a| a.expect("all reported"))
        .collect();
    let line = list
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(" ")
        + "\n";
    for mut c in children {
        c.write_all(line.as_bytes())?;
    }
    Ok(list)
}

fn parse_report(line: &str, n: usize) -> Option<(usize, SocketAddr)> {
    let (rank, addr) = line.trim().split_once(' ')?;
    let rank: usize = rank.parse().ok().filter(|r| *r < n)?;
    Some((rank, addr.parse().ok()?))
}

/// Child side: reports `rank`'s address to the parent at `server` and waits for the full list.
pub(crate) fn join(
    server: SocketAddr,
    rank: usize,
    mine: SocketAddr,
    timeout: Duration,
) -> Result<Vec<SocketAddr>> {
    let mut s =
        TcpStream::connect_timeout(&server, timeout).context("reaching the bench parent")?;
    s.set_read_timeout(Some(timeout))?;
    writeln!(s, "{rank} {mine}")?;
    let mut line = String::new();
    BufReader::new(&s)
        .read_line(&mut line)
        .context("waiting for the other ranks")?;
    line.split_whitespace()
        .map(|a| a.parse().with_context(|| format!("bad address {a:?}")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exchange() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let server = l.local_addr().unwrap();
        let kids: Vec<_> = (0..3)
            .map(|r| {
                std::thread::spawn(move || {
                    let me: SocketAddr = format!("127.0.0.1:{}", 1000 + r).parse().unwrap();
                    join(server, r, me, Duration::from_secs(5)).unwrap()
                })
            })
            .collect();
        let list = serve(&l, 3, Instant::now() + Duration::from_secs(5)).unwrap();
        for k in kids {
            assert_eq!(k.join().unwrap(), list);
        }
        assert_eq!(list[2].port(), 1002);
    }

    #[test]
    fn missing_rank_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let e = serve(&l, 2, Instant::now() + Duration::from_millis(50)).unwrap_err();
        assert!(e.to_string().contains("[0, 1]"), "{e}");
    }
}
