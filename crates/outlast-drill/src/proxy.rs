//! The fault proxy: in local mode it sits on every link between two sites' agents, so a
//! drill can cut a link or slow it down without kernel netem and without root.
//!
//! One listener per ordered pair (a dials b): agent `a` is started with
//! `--peer-via b=<that listener>`, and the proxy forwards to b's peer port from a's own site
//! address, so b still sees a's address. A cut link refuses new connections and closes the
//! open ones at once; a delay holds every chunk for `delay_ms` after it was read, in each
//! direction, keeping the order and the throughput (a round trip grows by twice the delay).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use crate::error::{io, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LinkState {
    pub cut: bool,
    pub delay_ms: u64,
}

struct Link {
    listen: SocketAddr,
    state: watch::Sender<LinkState>,
    task: JoinHandle<()>,
}

/// The proxy for a set of sites: `(from, to)` → link.
pub struct FaultProxy {
    links: BTreeMap<(String, String), Link>,
}

/// A site as the proxy needs it: name, own address, peer listener.
pub struct Endpoint {
    pub name: String,
    pub address: IpAddr,
    pub peer: SocketAddr,
}

impl FaultProxy {
    /// Opens one listener per ordered pair of sites, on 127.0.0.1 with a free port.
    pub async fn start(sites: &[Endpoint]) -> Result<Self> {
        let mut links = BTreeMap::new();
        for a in sites {
            for b in sites.iter().filter(|b| b.name != a.name) {
                let listener = TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(io("the fault proxy cannot listen on 127.0.0.1"))?;
                let listen = listener
                    .local_addr()
                    .map_err(io("the fault proxy's address"))?;
                let (state, _) = watch::channel(LinkState::default());
                let task = tokio::spawn(serve(listener, a.address, b.peer, state.subscribe()));
                links.insert(
                    (a.name.clone(), b.name.clone()),
                    Link {
                        listen,
                        state,
                        task,
                    },
                );
            }
        }
        Ok(Self { links })
    }

    /// Where `from` must dial each other site: `(to, proxy address)`.
    pub fn dial_map(&self, from: &str) -> Vec<(String, SocketAddr)> {
        self.links
            .iter()
            .filter(|((a, _), _)| a == from)
            .map(|((_, b), l)| (b.clone(), l.listen))
            .collect()
    }

    /// Changes every link between a site of `a` and a site of `b`, both directions.
    pub fn between(&self, a: &[String], b: &[String], f: impl Fn(&mut LinkState)) {
        for ((x, y), link) in &self.links {
            let hit = (a.contains(x) && b.contains(y)) || (b.contains(x) && a.contains(y));
            if hit {
                link.state.send_modify(&f);
            }
        }
    }

    /// Every link to or from `site`.
    pub fn around(&self, site: &str, f: impl Fn(&mut LinkState)) {
        for ((x, y), link) in &self.links {
            if x == site || y == site {
                link.state.send_modify(&f);
            }
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
            .get(&(from.to_string(), to.to_string()))
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
        while let Some((read_at, buf)) = rx.recv().await {
            let delay = Duration::from_millis(state.borrow().delay_ms);
            tokio::time::sleep_until(read_at + delay).await;
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
}
