//! The simulated network: an `RpcTransport` that delivers one node's RPC bytes to another
//! node's `RpcHandler` in memory, with seeded delay, loss, duplication (and so reordering),
//! partitions and one-way cuts.
//!
//! A call is a request message and a reply message. Every draw (delays, loss, duplicate) is
//! made from the run's one generator when the call starts, so the same seed makes the same
//! draws in the same order. The request is delivered after its delay, if the link from the
//! caller to the target is up *at that moment* and the target is alive; the handler then runs
//! as its own task (a server finishes what it received even when the caller gave up); its
//! reply travels back if the reverse link is up when the reply is sent. A lost request or
//! reply leaves the caller waiting until its timeout (`RpcFailure::Timeout`: it cannot know
//! whether the request arrived); a request to a node that is down, or over a link cut when it
//! is sent, fails after a short connect delay with `RpcFailure::Connect` (nothing was
//! delivered, as with a refused or unroutable connection).
//!
//! Gossip goes through the same network: `SimSocket` is the gossip engine's `Transport`, a
//! datagram socket whose sends draw their delay, loss and duplication from the same generator
//! and meet the same cuts and dead nodes. A datagram is delivered into the target's bounded
//! inbox (a full one loses it, as a full socket buffer) if, after its delay, the sender's life
//! is still current, the target is up and the link is not cut. A datagram to a crashed agent
//! whose machine is up (no power cut) is *refused* instead: after the same delay the sender's
//! socket hears of it (`Transport::next_refusal`), as a real host answers ICMP port
//! unreachable, and its engine declares that member down at once.

use crate::rng::Rng;
use crate::trace::{Trace, fnv};
use orion_raft::{BoxFuture, RpcFailure, RpcHandler, RpcTransport};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::mpsc;

/// A connect to a dead or unreachable node fails after this: a refused connection is quick, an
/// unroutable one waits for the client's connect timeout (500 ms in production); the
/// simulator takes a value between, the same for every such call.
const CONNECT_FAIL_MS: u64 = 50;

/// Datagrams queued for one node's gossip engine: its socket's receive buffer. The engine's
/// own input queue holds 1,024; a few seconds of a 5-node cluster's gossip fit in far fewer.
const GOSSIP_INBOX_MAX: usize = 1024;

/// One datagram and its sender's address.
type Datagram = (Vec<u8>, SocketAddr);

/// Degradation of every link, changed by the nemesis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Weather {
    /// One-way delay is uniform in `delay_min_ms..=delay_max_ms`.
    pub delay_min_ms: u64,
    pub delay_max_ms: u64,
    /// Per message, in thousandths.
    pub loss_per_mille: u64,
    /// Per request: delivered twice (the copy later by its own delay), in thousandths.
    pub dup_per_mille: u64,
}

impl Weather {
    /// A LAN: 0.1..1 ms one way, nothing lost or duplicated.
    pub const CALM: Weather = Weather {
        delay_min_ms: 0,
        delay_max_ms: 1,
        loss_per_mille: 0,
        dup_per_mille: 0,
    };
}

struct State {
    rng: Rng,
    weather: Weather,
    /// Raft address -> (node index, handler) of every node that is up.
    up: BTreeMap<String, (usize, RpcHandler)>,
    /// The current life of each node that is up; calls from an older life (tasks of a
    /// crashed node not yet wound down) go nowhere.
    lives: BTreeMap<usize, u64>,
    /// Gossip address -> (node index, inbox, refusals) of every node whose gossip is up.
    gossip: BTreeMap<SocketAddr, (usize, mpsc::Sender<Datagram>, mpsc::Sender<SocketAddr>)>,
    /// Gossip address -> node index of every node whose machine is up, its agent running or
    /// not: a datagram to a crashed agent on a live machine is refused (ICMP port
    /// unreachable, as a real host answers); one to a machine without power is lost.
    hosts: BTreeMap<SocketAddr, usize>,
    /// Directed links that drop everything: (from, to).
    cut: BTreeSet<(usize, usize)>,
    delivered: u64,
    lost: u64,
    duplicated: u64,
    /// Deliveries per RPC path (e.g. how many snapshot chunks were installed).
    paths: BTreeMap<&'static str, u64>,
    /// Gossip datagrams delivered and lost.
    datagrams: (u64, u64),
}

/// The network all nodes of a run share. Cheap to clone.
#[derive(Clone)]
pub struct SimNet {
    state: Arc<Mutex<State>>,
    trace: Arc<Trace>,
}

/// What one call will meet, drawn when it starts.
struct Plan {
    request_ms: u64,
    reply_ms: u64,
    lose_request: bool,
    lose_reply: bool,
    duplicate_after_ms: Option<u64>,
}

impl SimNet {
    pub fn new(seed: u64, trace: Arc<Trace>) -> SimNet {
        SimNet {
            state: Arc::new(Mutex::new(State {
                rng: Rng::new(seed),
                weather: Weather::CALM,
                up: BTreeMap::new(),
                lives: BTreeMap::new(),
                gossip: BTreeMap::new(),
                hosts: BTreeMap::new(),
                cut: BTreeSet::new(),
                delivered: 0,
                lost: 0,
                duplicated: 0,
                paths: BTreeMap::new(),
                datagrams: (0, 0),
            })),
            trace,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The transport of node `from` in its life `life`.
    pub fn transport(&self, from: usize, life: u64) -> Arc<dyn RpcTransport> {
        Arc::new(SimTransport {
            from,
            life,
            net: self.clone(),
        })
    }

    /// Node `index`, in its life `life`, answers at `addr` from now on.
    pub fn up(&self, index: usize, life: u64, addr: &str, handler: RpcHandler) {
        let mut s = self.lock();
        s.up.insert(addr.to_string(), (index, handler));
        s.lives.insert(index, life);
    }

    /// Node `index` at `addr` neither answers nor sends from now on, RPC or gossip. Its
    /// machine refuses gossip sent to it unless `power_cut` took the machine down too.
    pub fn down(&self, index: usize, addr: &str, power_cut: bool) {
        let mut s = self.lock();
        s.up.remove(addr);
        s.lives.remove(&index);
        s.gossip.retain(|_, (i, _, _)| *i != index);
        if power_cut {
            s.hosts.retain(|_, i| *i != index);
        }
    }

    /// The gossip socket of node `index` in its life `life`, receiving at `addr` from now on.
    pub fn gossip_socket(&self, index: usize, life: u64, addr: SocketAddr) -> Arc<SimSocket> {
        let (tx, rx) = mpsc::channel(GOSSIP_INBOX_MAX);
        let (refused_tx, refused_rx) = mpsc::channel(GOSSIP_INBOX_MAX);
        let mut s = self.lock();
        s.gossip.insert(addr, (index, tx, refused_tx));
        s.hosts.insert(addr, index);
        Arc::new(SimSocket {
            from: index,
            life,
            addr,
            net: self.clone(),
            inbox: tokio::sync::Mutex::new(rx),
            refusals: tokio::sync::Mutex::new(refused_rx),
        })
    }

    /// RPC deliveries to `path` so far.
    pub fn delivered_to(&self, path: &str) -> u64 {
        self.lock().paths.get(path).copied().unwrap_or(0)
    }

    /// (delivered, lost) gossip datagrams so far.
    pub fn datagrams(&self) -> (u64, u64) {
        self.lock().datagrams
    }

    /// Sends one datagram: its fate is drawn now, its delivery happens after its delay.
    fn send_datagram(&self, sender: (usize, u64), from: SocketAddr, to: SocketAddr, buf: &[u8]) {
        let plan = self.plan();
        let bytes = Arc::new(buf.to_vec());
        self.deliver_later(
            sender,
            from,
            to,
            bytes.clone(),
            plan.request_ms,
            plan.lose_request,
        );
        if let Some(after) = plan.duplicate_after_ms {
            self.deliver_later(sender, from, to, bytes, plan.request_ms + after, false);
        }
    }

    fn deliver_later(
        &self,
        sender: (usize, u64),
        from: SocketAddr,
        to: SocketAddr,
        bytes: Arc<Vec<u8>>,
        after_ms: u64,
        lose: bool,
    ) {
        let net = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(after_ms)).await;
            let n = sender.0;
            let (target, refuse) = {
                let s = net.lock();
                let alive = s.lives.get(&n) == Some(&sender.1);
                let target = s
                    .gossip
                    .get(&to)
                    .filter(|(t, _, _)| alive && !lose && !s.cut.contains(&(n, *t)))
                    .map(|(t, tx, _)| (*t, tx.clone()));
                // Nobody listens at `to`, but its machine is up and reachable: it refuses the
                // datagram, and the refusal travels back to the sender (if its socket lives).
                let refuse = match s.hosts.get(&to) {
                    Some(t) if alive && !lose && !s.gossip.contains_key(&to) => s
                        .gossip
                        .get(&from)
                        .filter(|_| !s.cut.contains(&(n, *t)) && !s.cut.contains(&(*t, n)))
                        .map(|(_, _, refused)| (*t, refused.clone())),
                    _ => None,
                };
                (target, refuse)
            };
            if let Some((t, refused)) = refuse {
                net.trace.record(format_args!("gossip refused n{n}->n{t}"));
                let back = after_ms;
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(back)).await;
                    let _ = refused.try_send(to);
                });
            }
            let hash = fnv(&bytes);
            let delivered = target.is_some_and(|(t, tx)| {
                let ok = tx.try_send((bytes.to_vec(), from)).is_ok();
                if ok {
                    net.trace
                        .record(format_args!("gossip n{n}->n{t} {hash:016x}"));
                }
                ok
            });
            let mut s = net.lock();
            if delivered {
                s.datagrams.0 += 1;
            } else {
                s.datagrams.1 += 1;
                drop(s);
                net.trace
                    .record(format_args!("gossip lost n{n}->{to} {hash:016x}"));
            }
        });
    }

    pub fn set_weather(&self, w: Weather) {
        self.lock().weather = w;
    }

    /// Drops everything from `from` to `to`.
    pub fn cut(&self, from: usize, to: usize) {
        self.lock().cut.insert((from, to));
    }

    /// Every link up again and the weather calm.
    pub fn heal(&self) {
        let mut s = self.lock();
        s.cut.clear();
        s.weather = Weather::CALM;
    }

    /// (delivered, lost, duplicated) messages so far.
    pub fn counts(&self) -> (u64, u64, u64) {
        let s = self.lock();
        (s.delivered, s.lost, s.duplicated)
    }

    fn plan(&self) -> Plan {
        let mut s = self.lock();
        let w = s.weather;
        let delay = |rng: &mut Rng| rng.range(w.delay_min_ms, w.delay_max_ms);
        let request_ms = delay(&mut s.rng);
        let reply_ms = delay(&mut s.rng);
        let lose_request = s.rng.chance(w.loss_per_mille);
        let lose_reply = s.rng.chance(w.loss_per_mille);
        let dup = s.rng.chance(w.dup_per_mille);
        let dup_ms = delay(&mut s.rng);
        Plan {
            request_ms,
            reply_ms,
            lose_request,
            lose_reply,
            duplicate_after_ms: dup.then_some(dup_ms),
        }
    }

    /// The target's handler if the sender (in its life) and the target are up and the link
    /// between them is not cut.
    fn reach(&self, from: (usize, u64), addr: &str) -> Option<(usize, RpcHandler)> {
        let s = self.lock();
        if s.lives.get(&from.0) != Some(&from.1) {
            return None;
        }
        let from = from.0;
        let (to, h) = s.up.get(addr)?;
        (!s.cut.contains(&(from, *to))).then(|| (*to, h.clone()))
    }

    fn link_up(&self, from: usize, to: usize) -> bool {
        !self.lock().cut.contains(&(from, to))
    }

    fn count(&self, f: impl FnOnce(&mut State)) {
        f(&mut self.lock());
    }

    async fn call(
        self,
        sender: (usize, u64),
        addr: String,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<Vec<u8>, RpcFailure> {
        let from = sender.0;
        let deadline = tokio::time::Instant::now() + timeout;
        let plan = self.plan();
        let Some((to, _)) = self.reach(sender, &addr) else {
            tokio::time::sleep(Duration::from_millis(CONNECT_FAIL_MS).min(timeout)).await;
            return Err(unreachable(addr));
        };
        let body_hash = fnv(&body);
        let (reply_tx, reply_rx) = tokio::sync::oneshot::channel();
        let net = self.clone();
        let addr2 = addr.clone();
        let body = Arc::new(body);
        let copy = body.clone();
        // The request's journey and the handler run on their own task.
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(plan.request_ms)).await;
            let Some((_, handler)) = net.reach(sender, &addr2).filter(|_| !plan.lose_request)
            else {
                net.count(|s| s.lost += 1);
                net.trace
                    .record(format_args!("lost n{from}->n{to} {path} {body_hash:016x}"));
                return;
            };
            net.count(|s| {
                s.delivered += 1;
                *s.paths.entry(path).or_default() += 1;
            });
            net.trace.record(format_args!(
                "deliver n{from}->n{to} {path} {body_hash:016x}"
            ));
            let res = handler.handle(path, &body).await;
            tokio::time::sleep(Duration::from_millis(plan.reply_ms)).await;
            if plan.lose_reply || !net.link_up(to, from) {
                net.count(|s| s.lost += 1);
                net.trace
                    .record(format_args!("lost reply n{to}->n{from} {path}"));
                return;
            }
            let summary = match &res {
                Ok(bytes) => format!("{:016x}", fnv(bytes)),
                Err(r) => format!("status {}", r.status),
            };
            net.trace
                .record(format_args!("reply n{to}->n{from} {path} {summary}"));
            let _ = reply_tx.send(res);
        });
        if let Some(after) = plan.duplicate_after_ms {
            let net = self.clone();
            let addr = addr.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(plan.request_ms + after)).await;
                if let Some((to, handler)) = net.reach(sender, &addr) {
                    net.count(|s| s.duplicated += 1);
                    net.trace.record(format_args!(
                        "duplicate n{from}->n{to} {path} {body_hash:016x}"
                    ));
                    // The copy's reply goes nowhere: its caller already has one.
                    let _ = handler.handle(path, &copy).await;
                }
            });
        }
        match tokio::time::timeout_at(deadline, reply_rx).await {
            Ok(Ok(Ok(bytes))) => Ok(bytes),
            Ok(Ok(Err(rejected))) => Err(RpcFailure::Status {
                addr,
                status: rejected.status,
                body: rejected.body,
            }),
            // Lost on the way (the sender was dropped) or too slow: the caller waits it out.
            Ok(Err(_)) => {
                tokio::time::sleep_until(deadline).await;
                Err(RpcFailure::Timeout {
                    addr,
                    ms: timeout.as_millis() as u64,
                })
            }
            Err(_) => Err(RpcFailure::Timeout {
                addr,
                ms: timeout.as_millis() as u64,
            }),
        }
    }
}

/// The failure of a call that reached no one: nothing was delivered.
fn unreachable(addr: String) -> RpcFailure {
    RpcFailure::Connect {
        addr,
        msg: "simulated: unreachable".to_string(),
    }
}

/// One node's view of the network.
struct SimTransport {
    from: usize,
    life: u64,
    net: SimNet,
}

impl RpcTransport for SimTransport {
    fn post(
        &self,
        addr: &str,
        path: &'static str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> BoxFuture<'static, Result<Vec<u8>, RpcFailure>> {
        Box::pin(self.net.clone().call(
            (self.from, self.life),
            addr.to_string(),
            path,
            body,
            timeout,
        ))
    }
}

/// One node's gossip socket in one life: sends go through the simulated network, receives
/// come from its inbox.
pub struct SimSocket {
    from: usize,
    life: u64,
    addr: SocketAddr,
    net: SimNet,
    inbox: tokio::sync::Mutex<mpsc::Receiver<Datagram>>,
    refusals: tokio::sync::Mutex<mpsc::Receiver<SocketAddr>>,
}

impl orion_gossip::Transport for SimSocket {
    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        Ok(self.addr)
    }

    fn send_to(&self, buf: &[u8], to: SocketAddr) -> std::io::Result<usize> {
        self.net
            .send_datagram((self.from, self.life), self.addr, to, buf);
        Ok(buf.len())
    }

    async fn recv_from(&self, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
        let mut inbox = self.inbox.lock().await;
        match inbox.recv().await {
            Some((bytes, from)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok((n, from))
            }
            // The node went down: its socket receives nothing more.
            None => std::future::pending().await,
        }
    }

    async fn next_refusal(&self) -> std::io::Result<SocketAddr> {
        let mut refusals = self.refusals.lock().await;
        match refusals.recv().await {
            Some(to) => Ok(to),
            None => std::future::pending().await,
        }
    }
}
