//! Views of one transport: a [`Subset`] of its ranks (a sub-communicator's world) and a
//! [`Routed`] pair that sends each peer over one of two transports (shared memory to
//! co-located ranks, TCP to the others).
//!
//! A subset renumbers ranks `0..len` in the order given. Errors from the parent name parent
//! ranks; a subset renames a member to its sub-rank and any other rank `r` to `len + r`, so
//! that [`Subset::global`] can always map back. Two subsets of one parent may share links only
//! if their operations never overlap in time (the hierarchical allreduce runs its stages one
//! after another, and its local and cross subsets use disjoint links anyway).

use std::{sync::Arc, time::Duration};

use super::Transport;
use crate::{
    error::{CollectiveError, Result},
    frame::{ErrorCode, Header},
};

/// The ranks `ranks` of a shared parent transport, as a world of their own.
pub struct Subset<T> {
    parent: Arc<T>,
    ranks: Vec<usize>,
    me: usize,
}

impl<T: Transport> Subset<T> {
    /// The world `ranks` (parent ranks, in sub-rank order), which must hold the parent's rank.
    pub fn new(parent: Arc<T>, ranks: Vec<usize>) -> Self {
        let me = ranks
            .iter()
            .position(|r| *r == parent.rank())
            .expect("a subset holds its own rank");
        Subset { parent, ranks, me }
    }

    /// The parent rank of a rank named in this subset's errors.
    pub fn global(&self, r: usize) -> usize {
        match self.ranks.get(r) {
            Some(g) => *g,
            None => r - self.ranks.len(),
        }
    }

    /// The parent transport.
    pub fn parent(&self) -> &Arc<T> {
        &self.parent
    }

    fn local(&self, g: usize) -> usize {
        match self.ranks.iter().position(|r| *r == g) {
            Some(i) => i,
            None => self.ranks.len() + g,
        }
    }

    fn peer(&self, p: usize) -> Result<usize> {
        self.ranks
            .get(p)
            .copied()
            .ok_or_else(|| CollectiveError::InvalidArgument(format!("no link to rank {p}")))
    }
}

impl<T: Transport> Transport for Subset<T> {
    fn rank(&self) -> usize {
        self.me
    }

    fn size(&self) -> usize {
        self.ranks.len()
    }

    fn link_waits(&self) -> Vec<Duration> {
        let all = self.parent.link_waits();
        if all.is_empty() {
            return all;
        }
        let at = |g: &usize| all.get(*g).copied().unwrap_or_default();
        self.ranks.iter().map(at).collect()
    }

    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()> {
        let g = self.peer(peer)?;
        let r = self.parent.send(g, header, payload).await;
        r.map_err(|e| e.renumber(|g| self.local(g)))
    }

    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        let g = self.peer(peer)?;
        let r = self.parent.send_parts(g, header, parts).await;
        r.map_err(|e| e.renumber(|g| self.local(g)))
    }

    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()> {
        let g = self.peer(peer)?;
        let r = self.parent.recv(g, expect, dst).await;
        r.map_err(|e| e.renumber(|g| self.local(g)))
    }

    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        let g = self.peer(peer)?;
        let r = self.parent.recv_with(g, expect, scratch, consume).await;
        r.map_err(|e| e.renumber(|g| self.local(g)))
    }

    /// Tells every rank of the *parent*: a failed stage fails the whole composed operation.
    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        let subject = subject.map(|s| self.global(s));
        self.parent
            .abort_all(header, code, subject, message, within)
            .await;
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        let g = self.ranks.get(peer)?;
        let w = self.parent.last_word(*g, within).await;
        w.map(|e| e.renumber(|g| self.local(g)))
    }

    fn waiting_on(&self) -> Option<usize> {
        self.parent.waiting_on().map(|g| self.local(g))
    }

    /// Closes nothing: the parent's links outlive any one view of them.
    async fn close(&self, _within: Duration) {}
}

/// Links to some peers over `a`, which spans only those ranks (and this one), and to the rest
/// over `b`, which spans the whole world: shared memory to co-located ranks, TCP to the others.
pub struct Routed<A, B> {
    a: A,
    b: B,
    /// World rank of each of `a`'s ranks.
    a_ranks: Vec<usize>,
}

impl<A: Transport, B: Transport> Routed<A, B> {
    /// `a_ranks[i]` is the world rank of `a`'s rank `i`; `b` spans the world.
    pub fn new(a: A, a_ranks: Vec<usize>, b: B) -> Self {
        assert!(
            a.size() == a_ranks.len() && a_ranks[a.rank()] == b.rank(),
            "routed transports disagree on this rank"
        );
        Routed { a, b, a_ranks }
    }

    fn via_a(&self, peer: usize) -> Option<usize> {
        self.a_ranks.iter().position(|r| *r == peer)
    }

    /// `a`'s name for world rank `g`: its rank there, or `len + g` (as in [`Subset`]).
    fn in_a(&self, g: usize) -> usize {
        self.via_a(g).unwrap_or(self.a_ranks.len() + g)
    }

    fn world(&self, e: CollectiveError) -> CollectiveError {
        let len = self.a_ranks.len();
        e.renumber(|i| self.a_ranks.get(i).copied().unwrap_or_else(|| i - len))
    }
}

impl<A: Transport, B: Transport> Transport for Routed<A, B> {
    fn rank(&self) -> usize {
        self.b.rank()
    }

    fn size(&self) -> usize {
        self.b.size()
    }

    fn link_waits(&self) -> Vec<Duration> {
        let (a, b) = (self.a.link_waits(), self.b.link_waits());
        if a.is_empty() && b.is_empty() {
            return Vec::new();
        }
        let get = |v: &[Duration], i: usize| v.get(i).copied().unwrap_or_default();
        (0..self.size())
            .map(|g| match self.via_a(g) {
                Some(i) => get(&a, i),
                None => get(&b, g),
            })
            .collect()
    }

    async fn send(&self, peer: usize, header: &Header, payload: &[u8]) -> Result<()> {
        match self.via_a(peer) {
            Some(i) => self
                .a
                .send(i, header, payload)
                .await
                .map_err(|e| self.world(e)),
            None => self.b.send(peer, header, payload).await,
        }
    }

    async fn send_parts(&self, peer: usize, header: &Header, parts: &[&[u8]]) -> Result<()> {
        match self.via_a(peer) {
            Some(i) => {
                let r = self.a.send_parts(i, header, parts).await;
                r.map_err(|e| self.world(e))
            }
            None => self.b.send_parts(peer, header, parts).await,
        }
    }

    async fn recv(&self, peer: usize, expect: &Header, dst: &mut [u8]) -> Result<()> {
        match self.via_a(peer) {
            Some(i) => self.a.recv(i, expect, dst).await.map_err(|e| self.world(e)),
            None => self.b.recv(peer, expect, dst).await,
        }
    }

    async fn recv_with(
        &self,
        peer: usize,
        expect: &Header,
        scratch: &mut [u8],
        consume: &mut dyn FnMut(usize, &[u8]),
    ) -> Result<()> {
        match self.via_a(peer) {
            Some(i) => {
                let r = self.a.recv_with(i, expect, scratch, consume).await;
                r.map_err(|e| self.world(e))
            }
            None => self.b.recv_with(peer, expect, scratch, consume).await,
        }
    }

    async fn abort_all(
        &self,
        header: &Header,
        code: ErrorCode,
        subject: Option<usize>,
        message: &str,
        within: Duration,
    ) {
        let sub = subject.map(|s| self.in_a(s));
        tokio::join!(
            self.a.abort_all(header, code, sub, message, within),
            self.b.abort_all(header, code, subject, message, within)
        );
    }

    async fn last_word(&self, peer: usize, within: Duration) -> Option<CollectiveError> {
        match self.via_a(peer) {
            Some(i) => self.a.last_word(i, within).await.map(|e| self.world(e)),
            None => self.b.last_word(peer, within).await,
        }
    }

    fn waiting_on(&self) -> Option<usize> {
        let a = self.a.waiting_on().map(|i| self.a_ranks[i]);
        a.or_else(|| self.b.waiting_on())
    }

    async fn close(&self, within: Duration) {
        tokio::join!(self.a.close(within), self.b.close(within));
    }
}
