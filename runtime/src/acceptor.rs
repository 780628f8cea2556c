//! [`Acceptor`]: the thread that keeps accepting connections on a worker's TCP listener.
//!
//! An epoch's mesh forms on the caller's thread, and only while the epoch is being entered.
//! If nothing accepted in between, strangers (a port scan, a flood of connections) would fill
//! the listener's backlog, and a peer dialing at the next mesh set-up would wait for a SYN
//! retry (a second or more) before its connection is seen. The acceptor takes every connection
//! as it comes and queues the newest [`QUEUED`], closing older ones: the peers of a mesh being
//! formed dial at that moment, so they are among the newest. The mesh set-up takes connections
//! from the queue and authenticates each (`tcp::connect_accepting`).

use std::{
    collections::VecDeque,
    io,
    net::SocketAddr,
    sync::{Arc, Mutex, PoisonError},
    thread::JoinHandle,
    time::Duration,
};

use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Notify, oneshot},
};
use tracing::{debug, warn};

/// Connections kept waiting for a mesh set-up; older ones are closed.
pub(crate) const QUEUED: usize = 64;

#[derive(Default)]
struct Queue {
    conns: Mutex<VecDeque<(SocketAddr, std::net::TcpStream)>>,
    ready: Notify,
}

/// A listening socket with a thread that accepts on it all the time.
pub(crate) struct Acceptor {
    addr: SocketAddr,
    queue: Arc<Queue>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Acceptor {
    /// Listens on `addr` (port 0: any) and starts accepting.
    pub(crate) fn bind(addr: SocketAddr) -> io::Result<Acceptor> {
        let listener = std::net::TcpListener::bind(addr)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let queue = Arc::new(Queue::default());
        let (stop, stopped) = oneshot::channel();
        let shared = queue.clone();
        let thread = std::thread::Builder::new()
            .name("ringrun-accept".into())
            .spawn(move || rt.block_on(accept_all(listener, shared, stopped)))?;
        Ok(Acceptor {
            addr,
            queue,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address it listens on.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The oldest queued connection, waiting for one if none is; on the caller's runtime.
    pub(crate) async fn next(&self) -> io::Result<(SocketAddr, TcpStream)> {
        loop {
            let queued = (self.queue.conns.lock())
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            if let Some((from, stream)) = queued {
                return TcpStream::from_std(stream).map(|s| (from, s));
            }
            self.queue.ready.notified().await;
        }
    }
}

impl Drop for Acceptor {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_all(
    listener: std::net::TcpListener,
    queue: Arc<Queue>,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => return warn!(error = %e, "the TCP listener cannot be polled"),
    };
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            got = listener.accept() => match got.and_then(|(s, from)| Ok((from, s.into_std()?))) {
                Ok(conn) => {
                    let mut conns = queue.conns.lock().unwrap_or_else(PoisonError::into_inner);
                    conns.push_back(conn);
                    if conns.len() > QUEUED && let Some((from, _)) = conns.pop_front() {
                        debug!(%from, "closed a connection no mesh set-up took");
                    }
                    drop(conns);
                    queue.ready.notify_one();
                }
                Err(e) => {
                    warn!(error = %e, "accept failed");
                    // Errors such as running out of descriptors repeat at once; do not spin.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_made_while_nobody_waits_are_queued_and_the_oldest_dropped() {
        let acceptor = Acceptor::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let addr = acceptor.local_addr();
        let clients: Vec<_> = (0..QUEUED + 8)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let newest = clients.last().unwrap().local_addr().unwrap();
        // Until the acceptor took the last connection (the kernel hands them over in order).
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !(acceptor.queue.conns.lock().unwrap().iter()).any(|(from, _)| *from == newest) {
            assert!(std::time::Instant::now() < deadline, "not accepted");
            std::thread::sleep(Duration::from_millis(5));
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let taken = rt.block_on(async {
            let mut taken = Vec::new();
            while taken.len() < QUEUED {
                let next = tokio::time::timeout(Duration::from_secs(5), acceptor.next());
                taken.push(next.await.expect("queued").unwrap().0);
            }
            taken
        });
        assert_eq!(taken.last(), Some(&newest));
        assert!(!taken.contains(&clients[0].local_addr().unwrap()));
        // Nothing more is queued: a further wait times out.
        let more = rt.block_on(async {
            tokio::time::timeout(Duration::from_millis(100), acceptor.next()).await
        });
        assert!(more.is_err());
    }
}
