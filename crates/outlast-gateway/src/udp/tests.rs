#![allow(clippy::disallowed_methods)]

use std::collections::BTreeMap;
use std::net::UdpSocket as StdUdp;
use std::sync::atomic::AtomicBool;
use std::thread::JoinHandle;

use super::*;

/// A UDP echo backend on its own thread that prefixes each answer with its tag.
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    fn start(tag: &'static str) -> Echo {
        let s = StdUdp::bind("127.0.0.1:0").expect("bind echo");
        s.set_read_timeout(Some(Duration::from_millis(20)))
            .expect("timeout");
        let addr = s.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = s.recv_from(&mut buf) {
                    let mut out = tag.as_bytes().to_vec();
                    out.extend_from_slice(&buf[..n]);
                    let _ = s.send_to(&out, from);
                }
            }
        });
        Echo {
            addr,
            stop,
            thread: Some(thread),
        }
    }

    /// Closes the socket: later datagrams get "port unreachable".
    fn kill(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl std::ops::Drop for Echo {
    fn drop(&mut self) {
        self.kill();
    }
}

fn route(backends: &[SocketAddr]) -> Routes {
    let mut services = BTreeMap::new();
    services.insert(
        "voip".to_string(),
        ServiceRoute {
            epoch: 1,
            local: true,
            refuse: false,
            primary_standby: false,
            backends: backends.to_vec(),
            up_since: BTreeMap::new(),
            remotes: vec![],
            unreachable: false,
        },
    );
    Routes { services }
}

struct Gw {
    addr: SocketAddr,
    gw: Arc<UdpGateway>,
    routes: watch::Sender<Arc<Routes>>,
    stop: CancellationToken,
    rt: tokio::runtime::Runtime,
}

impl Gw {
    fn start(backends: &[SocketAddr], options: UdpOptions, cap: usize) -> Gw {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let (tx, rx) = watch::channel(Arc::new(route(backends)));
        let gw = UdpGateway::new(
            "voip",
            "127.0.0.1".parse().expect("ip"),
            HashSet::new(),
            rx,
            Arc::default(),
            Arc::new(LeaseClock::default()),
            options,
            ConnLimit::new("udp", cap),
        );
        let sockets = udp_sockets("127.0.0.1:0".parse().expect("addr"), 1).expect("sockets");
        let addr = sockets[0].local_addr().expect("addr");
        let stop = CancellationToken::new();
        rt.spawn(serve_udp(sockets, gw.clone(), stop.clone()));
        Gw {
            addr,
            gw,
            routes: tx,
            stop,
            rt,
        }
    }
}

impl std::ops::Drop for Gw {
    fn drop(&mut self) {
        self.stop.cancel();
        std::thread::sleep(Duration::from_millis(50));
        let _ = &self.rt;
    }
}

fn options(affinity: Affinity, responses: Option<u32>) -> UdpOptions {
    UdpOptions {
        affinity,
        idle_timeout: Duration::from_secs(5),
        responses,
        max_per_source: 100,
    }
}

fn client() -> StdUdp {
    let c = StdUdp::bind("127.0.0.1:0").expect("client");
    c.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    c
}

/// Sends `msg` and returns the answer's tag (the text before ':').
fn ask(c: &StdUdp, to: SocketAddr, msg: &str) -> Option<String> {
    c.send_to(msg.as_bytes(), to).ok()?;
    let mut buf = [0u8; 2048];
    let (n, _) = c.recv_from(&mut buf).ok()?;
    let text = String::from_utf8_lossy(&buf[..n]).to_string();
    assert!(text.ends_with(msg), "answer {text:?} to {msg:?}");
    text.split(':').next().map(str::to_string)
}

#[test]
fn a_session_keeps_its_backend_for_a_thousand_datagrams_and_sessions_spread() {
    let (a, b) = (Echo::start("A:"), Echo::start("B:"));
    let gw = Gw::start(&[a.addr, b.addr], options(Affinity::Session, None), 100);
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let c = client();
        let first = ask(&c, gw.addr, "hello").expect("answer");
        for i in 0..1000 {
            assert_eq!(ask(&c, gw.addr, &format!("m{i}")).as_ref(), Some(&first));
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "sessions go round the backends: {seen:?}");
    std::thread::sleep(Duration::from_millis(50));
    let c = gw.gw.counters();
    assert_eq!(c.sessions_opened, 4);
    assert_eq!(c.datagrams_in, 4004);
    assert_eq!(c.datagrams_out, 2 * 4004);
}

#[test]
fn ip_affinity_keeps_every_port_of_a_client_together_and_packet_affinity_spreads() {
    let (a, b) = (Echo::start("A:"), Echo::start("B:"));
    let gw = Gw::start(&[a.addr, b.addr], options(Affinity::Ip, None), 100);
    let tags: HashSet<String> = (0..6)
        .map(|_| ask(&client(), gw.addr, "sip").expect("answer"))
        .collect();
    assert_eq!(tags.len(), 1, "one client IP, one backend: {tags:?}");
    drop(gw);
    let gw = Gw::start(&[a.addr, b.addr], options(Affinity::Packet, None), 100);
    let c = client();
    let tags: Vec<String> = (0..6)
        .map(|i| ask(&c, gw.addr, &format!("log{i}")).expect("answer"))
        .collect();
    assert!(tags.windows(2).all(|w| w[0] != w[1]), "{tags:?}");
}

#[test]
fn a_dead_backend_s_sessions_move_and_lose_nothing() {
    let (mut a, mut b) = (Echo::start("A:"), Echo::start("B:"));
    let gw = Gw::start(&[a.addr, b.addr], options(Affinity::Session, None), 100);
    let clients: Vec<StdUdp> = (0..4).map(|_| client()).collect();
    let mut on_a = 0;
    for c in &clients {
        if ask(c, gw.addr, "x").as_deref() == Some("A") {
            on_a += 1;
        }
    }
    assert!(on_a > 0 && on_a < 4, "sessions on both: {on_a}");
    a.kill();
    for i in 0..200 {
        for c in &clients {
            assert_eq!(
                ask(c, gw.addr, &format!("after{i}")).as_deref(),
                Some("B"),
                "every datagram answered, by the live backend"
            );
        }
    }
    assert_eq!(gw.gw.counters().sessions_moved, on_a);
    // With no backend left, datagrams are dropped and counted, not queued.
    b.kill();
    let c = client();
    assert_eq!(ask(&c, gw.addr, "nobody"), None);
    assert!(gw.gw.counters().dropped_no_backend >= 1);
}

#[test]
fn sessions_leave_a_backend_that_leaves_the_routing() {
    let (a, b) = (Echo::start("A:"), Echo::start("B:"));
    let gw = Gw::start(&[a.addr, b.addr], options(Affinity::Session, None), 100);
    let c = client();
    let first = ask(&c, gw.addr, "x").expect("answer");
    let (keep, other) = if first == "A" {
        (b.addr, "B")
    } else {
        (a.addr, "A")
    };
    gw.routes.send_replace(Arc::new(route(&[keep])));
    assert_eq!(ask(&c, gw.addr, "y").as_deref(), Some(other));
}

#[test]
fn idle_and_answered_sessions_end_and_the_cap_holds() {
    let a = Echo::start("A:");
    let mut o = options(Affinity::Session, None);
    o.idle_timeout = Duration::from_millis(200);
    let gw = Gw::start(&[a.addr], o, 2);
    let (c1, c2, c3) = (client(), client(), client());
    assert!(ask(&c1, gw.addr, "1").is_some());
    assert!(ask(&c2, gw.addr, "2").is_some());
    assert_eq!(gw.gw.counters().sessions_open, 2);
    c3.set_read_timeout(Some(Duration::from_millis(100)))
        .expect("timeout");
    assert_eq!(ask(&c3, gw.addr, "3"), None, "over the cap");
    assert_eq!(gw.gw.counters().dropped_cap, 1);
    std::thread::sleep(Duration::from_millis(400));
    assert_eq!(gw.gw.counters().sessions_open, 0, "idle sessions ended");
    assert!(ask(&c3, gw.addr, "3").is_some(), "room again");
    drop(gw);

    let gw = Gw::start(&[a.addr], options(Affinity::Session, Some(1)), 100);
    let c = client();
    for i in 0..5 {
        assert!(ask(&c, gw.addr, &format!("q{i}")).is_some());
    }
    std::thread::sleep(Duration::from_millis(50));
    let n = gw.gw.counters();
    assert_eq!(n.sessions_open, 0, "an answered request ends its session");
    assert_eq!(n.sessions_opened, 5);
}

#[test]
fn one_way_datagrams_need_no_session() {
    let s = StdUdp::bind("127.0.0.1:0").expect("sink");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("timeout");
    let gw = Gw::start(
        &[s.local_addr().expect("addr")],
        options(Affinity::Session, Some(0)),
        100,
    );
    let c = client();
    for i in 0..50 {
        c.send_to(format!("log {i}").as_bytes(), gw.addr)
            .expect("send");
    }
    let mut buf = [0u8; 100];
    for i in 0..50 {
        let (n, _) = s.recv_from(&mut buf).expect("forwarded");
        assert_eq!(&buf[..n], format!("log {i}").as_bytes());
    }
    assert_eq!(gw.gw.counters().sessions_opened, 0);
}

#[test]
fn answers_leave_many_to_a_call_and_in_the_order_they_came() {
    let gw = Gw::start(&[], options(Affinity::Session, None), 10);
    let clients: Vec<StdUdp> = (0..40).map(|_| client()).collect();
    let to: Vec<SocketAddr> = clients
        .iter()
        .map(|c| c.local_addr().expect("addr"))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let counted = rt.block_on(async {
        let listener = Arc::new(UdpSocket::bind("127.0.0.1:0").await.expect("bind"));
        listener.writable().await.expect("writable");
        // 40 answers for 40 clients: one call takes a whole batch of them.
        let batch: Vec<Reply> = (0..40)
            .map(|i| (to[i], format!("to {i}").into_bytes()))
            .collect();
        let n = send_batch(&listener, &batch).expect("sendmmsg");
        assert_eq!(n, BATCH, "one system call sent a whole batch");
        // 100 answers queued for the first client go out whole and in order.
        let (tx, rx) = mpsc::channel(REPLY_QUEUE);
        for i in 0..100 {
            tx.send((to[0], format!("seq {i}").into_bytes()))
                .await
                .expect("queued");
        }
        drop(tx);
        replier(listener, rx, gw.gw.clone()).await;
        gw.gw.counters().datagrams_out
    });
    assert_eq!(counted, 100, "the replier counts what it sent");
    let mut buf = [0u8; 64];
    for (i, c) in clients.iter().enumerate().take(BATCH) {
        let (n, _) = c.recv_from(&mut buf).expect("batched answer");
        assert_eq!(&buf[..n], format!("to {i}").as_bytes());
    }
    assert!(
        clients[BATCH].recv_from(&mut buf).is_err(),
        "the 33rd waits for the next call"
    );
    for i in 0..100 {
        let (n, _) = clients[0].recv_from(&mut buf).expect("queued answer");
        assert_eq!(&buf[..n], format!("seq {i}").as_bytes());
    }
}

/// `n` datagrams from `ip`, each from a new port (a new session each), without waiting for
/// answers.
fn flood(ip: &str, to: SocketAddr, n: usize) {
    for i in 0..n {
        let s = StdUdp::bind((ip, 0)).expect("flood socket");
        let _ = s.send_to(format!("flood{i}").as_bytes(), to);
    }
}

/// How many of `n` new clients at `ip`, all asking at once, get an answer within 500 ms.
fn served(ip: &str, to: SocketAddr, n: usize) -> usize {
    let clients: Vec<StdUdp> = (0..n)
        .map(|i| {
            let c = StdUdp::bind((ip, 0)).expect("client");
            let _ = c.send_to(format!("hello{i}").as_bytes(), to);
            c
        })
        .collect();
    let deadline = outlast_core::clock::now() + Duration::from_millis(500);
    clients
        .iter()
        .filter(|c| {
            let left = deadline.saturating_duration_since(outlast_core::clock::now());
            let _ = c.set_read_timeout(Some(left.max(Duration::from_millis(1))));
            let mut buf = [0u8; 256];
            c.recv_from(&mut buf).is_ok()
        })
        .count()
}

/// Issue 38: 30,000 datagrams from two addresses filled a site's session cap in 0.7 s, and
/// new legitimate sessions were dropped until the flood's sessions idled out. With the
/// per-address limit (a tenth of the cap by default) the two addresses hold 1,000 sessions
/// each and everyone else gets in; without it (the limit at the cap) nobody does.
#[test]
fn a_flood_from_two_addresses_leaves_room_for_everyone_else() {
    let echo = Echo::start("A:");
    let mut figures = Vec::new();
    for per_source in [10_000u64, 1_000] {
        let mut o = options(Affinity::Session, None);
        o.max_per_source = per_source;
        o.idle_timeout = Duration::from_secs(30);
        let gw = Gw::start(&[echo.addr], o, 10_000);
        let t = outlast_core::clock::now();
        flood("127.0.0.2", gw.addr, 15_000);
        flood("127.0.0.3", gw.addr, 15_000);
        let flooded = t.elapsed();
        std::thread::sleep(Duration::from_millis(100));
        let ok = served("127.0.0.4", gw.addr, 50);
        let c = gw.gw.counters();
        println!(
            "max_sessions_per_source {per_source}: 30,000 datagrams from 2 addresses in {flooded:?}; \
             sessions open {}, dropped at the cap {}, at the per-address limit {}; \
             then {ok} of 50 new clients of a third address answered",
            c.sessions_open, c.dropped_cap, c.dropped_source_cap
        );
        figures.push((per_source, ok, c));
    }
    let (_, ok_without, without) = &figures[0];
    let (_, ok_with, with) = &figures[1];
    assert_eq!(*ok_without, 0, "the flood filled the cap: {without:?}");
    assert_eq!(*ok_with, 50, "{with:?}");
    assert!(with.sessions_open <= 2_050, "{with:?}");
    assert!(with.dropped_source_cap >= 20_000, "{with:?}");
}

/// At its limit, a client address gives up its own session idle the longest (a phone behind
/// a NAT that changed port keeps working); a busy one is not ended.
#[test]
fn at_its_limit_an_address_gives_up_its_idlest_session() {
    let echo = Echo::start("A:");
    let mut o = options(Affinity::Session, None);
    o.max_per_source = 3;
    let gw = Gw::start(&[echo.addr], o, 100);
    let clients: Vec<StdUdp> = (0..3).map(|_| client()).collect();
    for c in &clients {
        assert!(ask(c, gw.addr, "hi").is_some());
    }
    let fourth = client();
    assert!(
        ask(&fourth, gw.addr, "busy").is_none(),
        "none idle yet: dropped"
    );
    assert_eq!(gw.gw.counters().dropped_source_cap, 1);
    std::thread::sleep(EVICTABLE_AFTER + Duration::from_millis(100));
    assert!(ask(&clients[1], gw.addr, "still here").is_some());
    assert!(
        ask(&fourth, gw.addr, "now").is_some(),
        "an idle one gave way"
    );
    let c = gw.gw.counters();
    assert_eq!(c.sessions_evicted, 1);
    assert_eq!(c.sessions_open, 3);
    assert!(
        ask(&clients[1], gw.addr, "kept").is_some(),
        "the busy one kept its session"
    );
}
