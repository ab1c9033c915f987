//! The fault proxy: in local mode it sits on every link between two sites' agents, so a
//! drill can cut a link or slow it down without kernel netem and without root.
//!
//! One listener per ordered pair (a dials b): agent `a` is started with
//! `--peer-via b=<that listener>`, and the proxy forwards to b's peer port from a's own site
//! address, so b still sees a's address. A cut link refuses new connections and closes the
//! open ones at once; a delay holds every chunk for `delay_ms` after it was read, in each
//! direction, keeping the order and the throughput (a round trip grows by twice the delay).
//!
//! A PostgreSQL dataset's replication crosses the same links: one listener more per ordered
//! pair of its members, the standby at `a` started with `--dataset-via DATASET/b=<it>`, so a
//! synchronous commit waits for the delayed link as it would between far sites.
//!
//! A WAN beyond a fixed delay: `jitter_ms` draws each chunk's delay from `delay_ms ±
//! jitter_ms` (TCP keeps the order, so a chunk never passes the one before it); `loss_ppm`
//! loses chunks as TCP sees it, the chunk held back a retransmission (Linux's least
//! retransmission timeout, 200 ms, plus a round trip) with every chunk behind it waiting
//! too; `bandwidth_bps` lets each direction carry at most that many bits a second.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::{io, Result};
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    pub cut: bool,
    pub delay_ms: u64,
    pub jitter_ms: u64,
    /// Chunks lost (and retransmitted), per million.
    pub loss_ppm: u32,
    /// Bits per second each way; 0: no cap.
    pub bandwidth_bps: u64,
}

/// Linux's least TCP retransmission timeout.
const MIN_RTO: Duration = Duration::from_millis(200);

struct Link {
    listen: SocketAddr,
    state: watch::Sender<LinkState>,
    task: JoinHandle<()>,
}

/// The proxy for a set of sites: `(from, to, channel)` → link. The channel is "" for the
/// agents' peer port, else a dataset's name (its standby streams from the other member).
pub struct FaultProxy {
    links: BTreeMap<(String, String, String), Link>,
}

/// A site as the proxy needs it: name, own address, peer listener, and the listeners of
/// its PostgreSQL dataset servers (dataset, address).
pub struct Endpoint {
    pub name: String,
    pub address: IpAddr,
    pub peer: SocketAddr,
    pub datasets: Vec<(String, SocketAddr)>,
}

impl FaultProxy {
    /// Opens one listener per ordered pair of sites, and one per ordered pair of members
    /// of each dataset, on 127.0.0.1 with a free port.
    pub async fn start(sites: &[Endpoint]) -> Result<Self> {
        let mut links = BTreeMap::new();
        for a in sites {
            for b in sites.iter().filter(|b| b.name != a.name) {
                let mut channels = vec![(String::new(), b.peer)];
                for (ds, target) in &b.datasets {
                    if a.datasets.iter().any(|(d, _)| d == ds) {
                        channels.push((ds.clone(), *target));
                    }
                }
                for (channel, target) in channels {
                    let listener = TcpListener::bind("127.0.0.1:0")
                        .await
                        .map_err(io("the fault proxy cannot listen on 127.0.0.1"))?;
                    let listen = listener
                        .local_addr()
                        .map_err(io("the fault proxy's address"))?;
                    let (state, _) = watch::channel(LinkState::default());
                    let task = tokio::spawn(serve(listener, a.address, target, state.subscribe()));
                    links.insert(
                        (a.name.clone(), b.name.clone(), channel),
                        Link {
                            listen,
                            state,
                            task,
                        },
                    );
                }
            }
        }
        Ok(Self { links })
    }

    /// Where `from` must dial each other site's peer port: `(to, proxy address)`.
    pub fn dial_map(&self, from: &str) -> Vec<(String, SocketAddr)> {
        self.links
            .iter()
            .filter(|((a, _, c), _)| a == from && c.is_empty())
            .map(|((_, b, _), l)| (b.clone(), l.listen))
            .collect()
    }

    /// Where `from`'s standbys must stream from each other member: `(dataset, to, proxy
    /// address)`.
    pub fn dataset_dial_map(&self, from: &str) -> Vec<(String, String, SocketAddr)> {
        self.links
            .iter()
            .filter(|((a, _, c), _)| a == from && !c.is_empty())
            .map(|((_, b, c), l)| (c.clone(), b.clone(), l.listen))
            .collect()
    }

    /// Changes every link between a site of `a` and a site of `b`, both directions.
    pub fn between(&self, a: &[String], b: &[String], f: impl Fn(&mut LinkState)) {
        for ((x, y, _), link) in &self.links {
            let hit = (a.contains(x) && b.contains(y)) || (b.contains(x) && a.contains(y));
            if hit {
                link.state.send_modify(&f);
            }
        }
    }

    /// Every link to or from `site`.
    pub fn around(&self, site: &str, f: impl Fn(&mut LinkState)) {
        for ((x, y, _), link) in &self.links {
            if x == site || y == site {
                link.state.send_modify(&f);
            }
        }
    }

    /// Every link of the cluster.
    pub fn all(&self, f: impl Fn(&mut LinkState)) {
        for link in self.links.values() {
            link.state.send_modify(&f);
        }
    }

    /// Back to clean links.
    pub fn heal(&self) {
        for link in self.links.values() {
            link.state.send_replace(LinkState::default());
        }
    }

    #[cfg(test)]
    fn state(&self, from: &str, to: &str) -> Option<LinkState> {
        self.links
            .get(&(from.to_string(), to.to_string(), String::new()))
            .map(|l| *l.state.borrow())
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

async fn serve(
    listener: TcpListener,
    source: IpAddr,
    target: SocketAddr,
    state: watch::Receiver<LinkState>,
) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        let Ok((client, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        // Finished connections are reaped as new ones come.
        while conns.try_join_next().is_some() {}
        if state.borrow().cut {
            drop(client);
            continue;
        }
        let state = state.clone();
        conns.spawn(async move {
            let Ok(server) = dial(source, target).await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let _ = server.set_nodelay(true);
            let (cr, cw) = client.into_split();
            let (sr, sw) = server.into_split();
            let cut = {
                let mut s = state.clone();
                async move {
                    let _ = s.wait_for(|s| s.cut).await;
                }
            };
            tokio::select! {
                _ = async { tokio::join!(pump(cr, sw, state.clone()), pump(sr, cw, state.clone())) } => {}
                _ = cut => {}
            }
        });
    }
}

async fn dial(source: IpAddr, target: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match target {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(source, 0))?;
    tokio::time::timeout(Duration::from_secs(1), sock.connect(target))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Copies one direction, holding each chunk `delay_ms` after it was read.
async fn pump(
    mut r: tokio::net::tcp::OwnedReadHalf,
    mut w: tokio::net::tcp::OwnedWriteHalf,
    state: watch::Receiver<LinkState>,
) {
    let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
    let reader = async move {
        loop {
            let mut buf = vec![0u8; 16 * 1024];
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send((Instant::now(), buf)).is_err() {
                        break;
                    }
                }
            }
        }
    };
    let writer = async move {
        let mut rng = rand::rngs::StdRng::from_entropy();
        // When the chunk before left (order is kept) and when the link is free again
        // under a bandwidth cap.
        let mut last_due = Instant::now();
        let mut free_at = Instant::now();
        while let Some((read_at, buf)) = rx.recv().await {
            let link = *state.borrow();
            let mut delay = Duration::from_millis(link.delay_ms);
            if link.jitter_ms > 0 {
                let j = rng.gen_range(0..=2 * link.jitter_ms);
                delay = (delay + Duration::from_millis(j))
                    .saturating_sub(Duration::from_millis(link.jitter_ms));
            }
            if link.loss_ppm > 0 && rng.gen_range(0..1_000_000) < link.loss_ppm {
                delay += MIN_RTO + Duration::from_millis(2 * link.delay_ms);
            }
            let mut due = (read_at + delay).max(last_due);
            if link.bandwidth_bps > 0 {
                // Delivered once its last bit has passed the link.
                let secs = buf.len() as f64 * 8.0 / link.bandwidth_bps as f64;
                free_at = due.max(free_at) + Duration::from_secs_f64(secs);
                due = free_at;
            }
            last_due = due;
            // A deadline already past goes at once: a sleep would still wait for the
            // timer's next tick (about a millisecond), on every chunk of an undelayed link.
            if due > Instant::now() {
                tokio::time::sleep_until(due).await;
            }
            if w.write_all(&buf).await.is_err() {
                return;
            }
        }
        let _ = w.shutdown().await;
    };
    tokio::join!(reader, writer);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server; the proxy in front of it; a client through the proxy.
    async fn setup() -> (FaultProxy, SocketAddr) {
        let echo = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let echo_addr = echo.local_addr().expect("addr");
        tokio::spawn(async move {
            while let Ok((mut s, _)) = echo.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        let ep = |name: &str| Endpoint {
            name: name.into(),
            address: "127.0.0.1".parse().expect("ip"),
            peer: echo_addr,
            datasets: Vec::new(),
        };
        let proxy = FaultProxy::start(&[ep("a"), ep("b")]).await.expect("proxy");
        let via = proxy.dial_map("a")[0].1;
        (proxy, via)
    }

    async fn round_trip(via: SocketAddr) -> std::io::Result<Duration> {
        let mut c = TcpStream::connect(via).await?;
        let t = Instant::now();
        c.write_all(b"ping").await?;
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(2), c.read_exact(&mut buf))
            .await
            .map_err(|_| std::io::Error::other("timeout"))??;
        assert_eq!(&buf, b"ping");
        Ok(t.elapsed())
    }

    #[tokio::test]
    async fn a_delay_adds_to_each_direction_and_a_cut_closes_the_link() {
        let (proxy, via) = setup().await;
        let clean = round_trip(via).await.expect("clean link");
        assert!(clean < Duration::from_millis(50), "{clean:?}");

        proxy.around("b", |s| s.delay_ms = 60);
        assert_eq!(proxy.state("a", "b").map(|s| s.delay_ms), Some(60));
        let slow = round_trip(via).await.expect("slow link");
        assert!(
            slow >= Duration::from_millis(120),
            "two directions of 60 ms: {slow:?}"
        );
        assert!(slow < Duration::from_millis(600), "{slow:?}");

        // An open connection is closed by the cut; a new one is refused.
        let mut open = TcpStream::connect(via).await.expect("connect");
        open.write_all(b"x").await.expect("write");
        proxy.between(&["a".into()], &["b".into()], |s| s.cut = true);
        let mut buf = [0u8; 8];
        let got = tokio::time::timeout(Duration::from_secs(2), open.read(&mut buf)).await;
        assert!(matches!(got, Ok(Ok(0)) | Ok(Err(_))), "closed: {got:?}");
        assert!(round_trip(via).await.is_err(), "a cut link carries nothing");

        proxy.heal();
        let healed = round_trip(via).await.expect("healed link");
        assert!(healed < Duration::from_millis(50), "{healed:?}");
    }

    /// 30 ± 10 ms each way keeps the bytes in order; a 1 Mbit/s cap stretches 64 KiB to
    /// half a second; a link that loses every chunk makes each wait a retransmission.
    #[tokio::test]
    async fn jitter_keeps_the_order_bandwidth_caps_and_loss_waits_a_retransmission() {
        let (proxy, via) = setup().await;
        proxy.all(|s| {
            s.delay_ms = 30;
            s.jitter_ms = 10;
        });
        let mut c = TcpStream::connect(via).await.expect("connect");
        let sent: Vec<u8> = (0..200u32).flat_map(|i| i.to_le_bytes()).collect();
        for chunk in sent.chunks(4) {
            c.write_all(chunk).await.expect("write");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let mut got = vec![0u8; sent.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut got))
            .await
            .expect("in time")
            .expect("read");
        assert_eq!(got, sent, "the order is kept");

        proxy.all(|s| {
            *s = LinkState {
                bandwidth_bps: 1_000_000,
                ..Default::default()
            }
        });
        let mut c = TcpStream::connect(via).await.expect("connect");
        let t = Instant::now();
        let big = vec![7u8; 64 * 1024];
        c.write_all(&big).await.expect("write");
        let mut back = vec![0u8; big.len()];
        tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut back))
            .await
            .expect("in time")
            .expect("read");
        // 512 kbit each way, one after the other at worst: at least 0.5 s.
        assert!(
            t.elapsed() >= Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );

        proxy.all(|s| {
            *s = LinkState {
                loss_ppm: 1_000_000,
                ..Default::default()
            }
        });
        let lossy = round_trip(via).await.expect("lossy link");
        assert!(
            lossy >= 2 * MIN_RTO,
            "each direction waits a retransmission: {lossy:?}"
        );
    }
}
