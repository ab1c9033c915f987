//! DNS steering with real agents, asked by dig (with `+subnet`, UDP and TCP) and by our own
//! client for counts: weights hold over 10,000 client networks, nearest follows the
//! networks (and the networks file, reloaded without a restart), latency answers from the
//! probes, the ECS scope says what decided, and a dead site is never answered.

// Synchronous test code on plain threads.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Cluster, Opts};
use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsCode, EdnsOption};
use hickory_proto::rr::{Name, RData, RecordType};

fn dig(port: u16, args: &[&str]) -> String {
    let out = Command::new("dig")
        .args([
            "@127.0.0.11",
            "-p",
            &port.to_string(),
            "+time=2",
            "+tries=1",
        ])
        .args(args)
        .output()
        .expect("dig");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// The A records in dig's answer section (`+noall +answer` lines), sorted.
fn answers(text: &str) -> Vec<String> {
    let mut v: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with(';') && l.contains("\tA\t"))
        .filter_map(|l| l.split_whitespace().last().map(str::to_string))
        .collect();
    v.sort();
    v
}

/// One query with an ECS option for `subnet`/`prefix` over UDP: (addresses, scope).
fn ask(
    sock: &UdpSocket,
    server: SocketAddr,
    name: &str,
    subnet: Ipv4Addr,
    prefix: u8,
) -> (Vec<Ipv4Addr>, u8) {
    let mut m = Message::new(0x4242, MessageType::Query, OpCode::Query);
    m.add_query(Query::query(
        Name::from_ascii(name).expect("name"),
        RecordType::A,
    ));
    let mut e = Edns::new();
    e.set_max_payload(1232);
    e.options_mut().insert(EdnsOption::Subnet(ClientSubnet::new(
        IpAddr::V4(subnet),
        prefix,
        0,
    )));
    m.set_edns(e);
    sock.send_to(&m.to_vec().expect("encode"), server)
        .expect("send");
    let mut buf = [0u8; 1500];
    let (n, _) = sock.recv_from(&mut buf).expect("an answer");
    let r = Message::from_vec(&buf[..n]).expect("decode");
    let addrs = r
        .answers
        .iter()
        .filter_map(|x| match &x.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    let scope = r
        .edns
        .as_ref()
        .and_then(|e| match e.options().get(EdnsCode::Subnet) {
            Some(EdnsOption::Subnet(s)) => Some(s.scope_prefix()),
            _ => None,
        })
        .expect("the answer echoes ECS");
    (addrs, scope)
}

#[test]
fn steered_names_answer_by_weight_network_and_latency_with_the_scope_that_decided() {
    let b = 11_100;
    let probe = std::net::TcpListener::bind(("127.0.0.1", b + 30)).expect("probe target");
    let mut o = Opts::new(b);
    o.mode = "active-active";
    o.extra = format!(
        r#"
[dns]
zone = "shop.test."
port = {dns}
ttl = 5
networks_file = "nets.txt"
[dns.networks]
"198.51.100.0/24" = ["west"]
"203.0.113.0/24" = ["east", "west"]
[[dns.probes]]
network = "100.64.0.0/10"
target = "127.0.0.1:{probe}"

[[services]]
name = "www"
dns_name = "www"
port = {p1}
steering = {{ selector = "weighted", weights = {{ east = 3, west = 1 }} }}
[services.backends]
east = ["127.0.0.1:{be}"]
west = ["127.0.0.1:{bw}"]

[[services]]
name = "near"
dns_name = "near"
port = {p2}
steering = {{ selector = "nearest" }}
[services.backends]
east = ["127.0.0.1:{be}"]
west = ["127.0.0.1:{bw}"]

[[services]]
name = "lat"
dns_name = "lat"
port = {p3}
steering = {{ selector = "latency" }}
[services.backends]
east = ["127.0.0.1:{be}"]
west = ["127.0.0.1:{bw}"]
"#,
        dns = b + 3,
        probe = b + 30,
        p1 = b + 4,
        p2 = b + 5,
        p3 = b + 6,
        be = b + 10,
        bw = b + 11,
    );
    let mut c = Cluster::new(o);
    let nets = c.dir.path().join("nets.txt");
    std::fs::write(&nets, "# none yet\n").expect("nets");
    c.start_all();
    for site in ["east", "west"] {
        c.wait_for(site, Duration::from_secs(20), "all healthy", |st| {
            st["leader"].is_string()
                && st["services"].as_array().is_some_and(|a| {
                    a.iter()
                        .all(|s| s["active_sites"].as_array().is_some_and(|x| x.len() == 2))
                })
        });
    }
    let port = b + 3;
    let server: SocketAddr = format!("127.0.0.11:{port}").parse().expect("addr");
    let start = Instant::now();
    while !dig(port, &["www.shop.test", "A"]).contains("status: NOERROR") {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "DNS not ready\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Nearest: the listed network decides, and the scope is its prefix (UDP and TCP).
    let t = dig(port, &["+subnet=198.51.100.7/32", "near.shop.test", "A"]);
    assert_eq!(answers(&t), vec!["127.0.0.12"], "{t}");
    assert!(t.contains("CLIENT-SUBNET: 198.51.100.7/32/24"), "{t}");
    let t = dig(
        port,
        &["+tcp", "+subnet=198.51.100.7/32", "near.shop.test", "A"],
    );
    assert_eq!(answers(&t), vec!["127.0.0.12"], "over TCP: {t}");
    assert!(t.contains("CLIENT-SUBNET: 198.51.100.7/32/24"), "{t}");
    let t = dig(port, &["+subnet=203.0.113.0/24", "near.shop.test", "A"]);
    assert_eq!(answers(&t), vec!["127.0.0.11"], "{t}");
    // No ECS: the resolver's address (127.0.0.1, not listed) gets config order, no option.
    let t = dig(port, &["near.shop.test", "A"]);
    assert_eq!(answers(&t), vec!["127.0.0.11"], "{t}");
    assert!(!t.contains("CLIENT-SUBNET"), "{t}");

    // Why, in words.
    let out = Command::new(common::bin())
        .args([
            "dns",
            "explain",
            "near",
            "--client",
            "198.51.100.7",
            "--config",
        ])
        .arg(&c.config)
        .args(["--site", "east"])
        .output()
        .expect("outlast dns explain");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("127.0.0.12") && text.contains("nearest: 198.51.100.0/24"),
        "{text}"
    );

    // The networks file is read again when it changes.
    let t0 = Instant::now();
    std::fs::write(&nets, "192.0.2.0/24 west\n").expect("nets");
    let wait_for = |want: &str, what: &str| {
        let start = Instant::now();
        loop {
            let t = dig(port, &["+subnet=192.0.2.1/24", "near.shop.test", "A"]);
            if answers(&t) == vec![want.to_string()] {
                return start.elapsed();
            }
            assert!(start.elapsed() < Duration::from_secs(8), "{what}: {t}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    wait_for("127.0.0.12", "the file's network");
    println!("networks file change answered after {:?}", t0.elapsed());
    std::fs::write(&nets, "192.0.2.0/24 east\n").expect("nets");
    wait_for("127.0.0.11", "the file's new site");
    std::fs::write(&nets, "192.0.2.0/33 east\n").expect("nets");
    std::thread::sleep(Duration::from_secs(3));
    wait_for("127.0.0.11", "a bad file keeps the last good networks");

    // Weighted: 10,000 client networks, 3:1, each /24 always the same answer.
    let sock = UdpSocket::bind("127.0.0.1:0").expect("client");
    sock.set_read_timeout(Some(Duration::from_secs(2)))
        .expect("timeout");
    let mut east = 0;
    for i in 0..10_000u32 {
        let x = i.to_be_bytes();
        let (a, scope) = ask(
            &sock,
            server,
            "www.shop.test.",
            Ipv4Addr::new(10, x[2], x[3], 0),
            24,
        );
        assert_eq!((a.len(), scope), (1, 24));
        if a[0] == Ipv4Addr::new(127, 0, 0, 11) {
            east += 1;
        }
    }
    println!(
        "weighted 3:1 over 10,000 networks: east {east}, west {}",
        10_000 - east
    );
    assert!(
        (7_125..=7_875).contains(&east),
        "east {east} of 10000 (75% ± 5%)"
    );
    let first = ask(
        &sock,
        server,
        "www.shop.test.",
        Ipv4Addr::new(10, 9, 9, 0),
        24,
    )
    .0;
    for _ in 0..20 {
        assert_eq!(
            ask(
                &sock,
                server,
                "www.shop.test.",
                Ipv4Addr::new(10, 9, 9, 0),
                24
            )
            .0,
            first
        );
    }

    // Latency: once both sites have measured the probe, its network is answered by it.
    let start = Instant::now();
    loop {
        let (a, scope) = ask(
            &sock,
            server,
            "lat.shop.test.",
            Ipv4Addr::new(100, 64, 1, 0),
            24,
        );
        if scope == 10 && a.len() == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "no latency answer: {a:?} /{scope}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let v: serde_json::Value = serde_json::from_str(
        &c.get("east", "/v1/dns/explain?name=lat&client=100.64.1.0/24")
            .expect("explain"),
    )
    .expect("json");
    println!("{v}");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("latency to 100.64.0.0/10")),
        "{v}"
    );
    drop(probe);

    // A dead site is never answered, whatever the client.
    c.kill9("west");
    c.wait_for("east", Duration::from_secs(10), "west down", |st| {
        st["sites"].as_array().is_some_and(|s| {
            s.iter()
                .any(|x| x["name"] == "west" && x["state"] == "down")
        })
    });
    std::thread::sleep(Duration::from_millis(500));
    for i in 0..1000u32 {
        let x = i.to_be_bytes();
        for name in ["www.shop.test.", "near.shop.test.", "lat.shop.test."] {
            let (a, scope) = ask(&sock, server, name, Ipv4Addr::new(198, 51, x[2], x[3]), 32);
            assert_eq!(a, vec![Ipv4Addr::new(127, 0, 0, 11)], "{name}");
            assert_eq!(scope, 0, "one site left: the answer is everyone's");
        }
    }
}
