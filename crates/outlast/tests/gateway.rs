//! The gateway with real agents and real backends on loopback: requests keep flowing while
//! a backend dies, a POST that reached a backend is never sent twice, WebSocket upgrades
//! and h2c pass through.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_value, Cluster, Opts};

/// One HTTP/1.1 request on its own connection; (status, body) or what went wrong.
fn request(addr: SocketAddr, head: &str, body: &str) -> Result<(u16, String), String> {
    request_within(addr, head, body, Duration::from_secs(10))
}

/// The same, with a client that gives up on an answer after `patience` (a read timeout).
fn request_within(
    addr: SocketAddr,
    head: &str,
    body: &str,
    patience: Duration,
) -> Result<(u16, String), String> {
    let mut s =
        TcpStream::connect_timeout(&addr, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(patience))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "{head}Host: test\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .map_err(|e| e.to_string())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).map_err(|e| e.to_string())?;
    let status = buf
        .get(9..12)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("no status in {buf:?}"))?;
    let body = buf
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn get(addr: SocketAddr) -> Result<(u16, String), String> {
    request(addr, "GET / HTTP/1.1\r\n", "")
}

/// GETs at `per_sec` for `secs`, running `fault` at `fault_at`; every outcome.
fn load(
    addr: SocketAddr,
    per_sec: u64,
    secs: u64,
    fault_at: Duration,
    fault: impl FnOnce(),
) -> Vec<Result<(u16, String), String>> {
    load_with(move || get(addr), per_sec, secs, fault_at, fault)
}

/// `send` at `per_sec` for `secs` (each on its own thread), running `fault` at
/// `fault_at`; every outcome.
fn load_with(
    send: impl Fn() -> Result<(u16, String), String> + Clone + Send + 'static,
    per_sec: u64,
    secs: u64,
    fault_at: Duration,
    fault: impl FnOnce(),
) -> Vec<Result<(u16, String), String>> {
    let (timed, _) = timed_load(send, per_sec, secs, fault_at, fault);
    timed.into_iter().map(|t| t.result).collect()
}

fn summarize(results: &[Result<(u16, String), String>]) -> (usize, usize, usize, Vec<String>) {
    let ok = results.iter().filter(|r| matches!(r, Ok((200, _)))).count();
    let by_west = results
        .iter()
        .filter(|r| matches!(r, Ok((200, b)) if b.contains("backend west")))
        .count();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !matches!(r, Ok((200, _))))
        .map(|r| format!("{r:?}"))
        .take(5)
        .collect();
    (results.len(), ok, by_west, failed)
}

#[test]
fn primary_standby_loses_no_get_when_the_primary_backend_dies() {
    let mut c = Cluster::new(Opts::new(7540));
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("east");
    assert_eq!(
        get(gw).map(|(s, b)| (s, b.trim().to_string())),
        Ok((200, "backend east".to_string()))
    );
    let results = load(gw, 100, 7, Duration::from_millis(1500), || {
        c.kill_backend("east")
    });
    let (n, ok, by_west, failed) = summarize(&results);
    println!(
        "primary-standby: {ok}/{n} GETs answered 200, {by_west} by west after east's backend died"
    );
    assert_eq!(ok, n, "lost requests: {failed:?}\n{}", c.logs());
    assert!(by_west > 0, "west never served");
    // Status carries per-backend health and the gateway's counters.
    let st = c.status("east").expect("status");
    let svc = &st["services"][0];
    assert!(svc["requests"].as_u64() >= Some(n as u64), "{svc}");
    assert!(svc["forwarded"].as_u64() > Some(0), "{svc}");
    assert_eq!(svc["backends"][0]["health"], "down", "{svc}");
    assert!(svc["backends"][0]["served"].as_u64() > Some(0), "{svc}");
    assert!(svc["backends"][0]["failed"].as_u64() >= Some(1), "{svc}");
    // The request times are a Prometheus histogram: buckets, a count of every request.
    let metrics = c.get("east", "/metrics").expect("metrics");
    let count = metric_value(&metrics, "outlast_gateway_request_seconds_count");
    assert!(count >= n as f64, "{count} timed of {n}:\n{metrics}");
    assert!(
        metrics.contains("# TYPE outlast_gateway_request_seconds histogram")
            && metrics
                .lines()
                .any(|l| l.starts_with("outlast_gateway_request_seconds_bucket")
                    && l.contains("le=\"0.005\"")),
        "{metrics}"
    );
}

/// Issue 23, item 4: the old primary's site is alive (only its backend died), so the new
/// primary acts as soon as the old one reports it let go, with no lease wait; GETs at
/// 100/s through the old primary's gateway, each with a 2 s client timeout, all succeed.
#[test]
fn a_live_old_primary_lets_go_at_once_and_no_client_waits_out_a_lease() {
    let mut c = Cluster::new(Opts::new(8120));
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("east");
    settle_primary(&c, gw);
    let killed = Arc::new(std::sync::Mutex::new(None::<Instant>));
    let results = {
        let killed = killed.clone();
        let patient = move || request_within(gw, "GET / HTTP/1.1\r\n", "", Duration::from_secs(2));
        load_with(patient, 100, 8, Duration::from_millis(1500), || {
            *killed.lock().unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
            c.kill_backend("east");
        })
    };
    let t0 = killed
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .expect("the backend was killed");
    // West has acted since (the load ran 6.5 s past the kill); when, its phases say.
    let st = c.status("west").expect("status");
    assert_eq!(st["services"][0]["primary"], "west", "{st}");
    assert_eq!(st["services"][0]["primary_acting"], true, "{st}");
    let phase = |name: &str| -> Option<u64> {
        st["failovers"].as_array()?.iter().find_map(|f| {
            f["phases"].as_array()?.iter().find(|p| p["name"] == name)?["at_ms"].as_u64()
        })
    };
    let kill_unix_ms = {
        let now_unix = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_millis() as u64;
        now_unix - t0.elapsed().as_millis() as u64
    };
    let acting = phase("acting").expect("west recorded acting");
    let declared = phase("declared").expect("west recorded declared");
    let acting_after = acting.saturating_sub(kill_unix_ms);
    println!(
        "backend killed -> declared {} ms -> acting {} ms (lease wait {} ms)",
        declared.saturating_sub(kill_unix_ms),
        acting_after,
        acting.saturating_sub(declared)
    );
    // The move is declared after detection (fall × check interval + grace, plus a report's
    // trip); from there the new primary waits only for the old one's word, not a lease
    // (1 s + margin).
    assert!(
        acting.saturating_sub(declared) < 300,
        "acting {} ms after the move was declared",
        acting.saturating_sub(declared)
    );
    assert!(
        acting_after < 1400,
        "acting {acting_after} ms after the kill"
    );
    let (n, ok, by_west, failed) = summarize(&results);
    println!("{ok}/{n} GETs through east's gateway answered 200 within 2 s, {by_west} by west");
    assert_eq!(ok, n, "failed or timed out: {failed:?}\n{}", c.logs());
}

/// One request of a timed load: when it started and how long it took (both from the load's
/// start), and what came back.
struct Timed {
    start: Duration,
    took: Duration,
    result: Result<(u16, String), String>,
}

/// `send` at `per_sec` for `secs`, each on its own thread, running `fault` at `fault_at`;
/// every outcome with its start and duration, and when the fault ran (all from the start).
fn timed_load(
    send: impl Fn() -> Result<(u16, String), String> + Clone + Send + 'static,
    per_sec: u64,
    secs: u64,
    fault_at: Duration,
    fault: impl FnOnce(),
) -> (Vec<Timed>, Duration) {
    let start = Instant::now();
    let total = per_sec * secs;
    let handles = std::thread::spawn(move || {
        let mut hs = Vec::new();
        for i in 0..total {
            let due = start + Duration::from_micros(i * 1_000_000 / per_sec);
            if let Some(wait) = due.checked_duration_since(Instant::now()) {
                std::thread::sleep(wait);
            }
            let send = send.clone();
            hs.push(std::thread::spawn(move || {
                let t = Instant::now();
                let result = send();
                Timed {
                    start: t - start,
                    took: t.elapsed(),
                    result,
                }
            }));
        }
        hs
    });
    std::thread::sleep(fault_at);
    let fault_ran = start.elapsed();
    fault();
    let hs = handles.join().expect("load thread");
    // A request thread that panicked counts as a failed request.
    let out = hs
        .into_iter()
        .map(|h| {
            h.join().unwrap_or_else(|_| Timed {
                start: Duration::ZERO,
                took: Duration::ZERO,
                result: Err("panicked".into()),
            })
        })
        .collect();
    (out, fault_ran)
}

/// Issue 38: the primary's backend dies while its site lives; the backends are python
/// http.server as `python3 -m http.server` runs it (a connection per request, a listen
/// queue of 5), as README's local cluster has them. The requests the gateway held while
/// the move was decided are released at once when the route moves: each must be answered
/// within the client's 2 s, none later than the move itself plus 200 ms. (Before: a failed
/// round did not wait, so the dead backend was dialled thousands of times a second; and
/// the released burst overflowed the new primary's listen queue, whose dropped SYNs come
/// again only after 1 s: 62-87 of 800 timed out.)
#[test]
fn held_requests_are_answered_as_soon_as_the_route_moves_even_to_a_small_listen_queue() {
    let mut o = Opts::new(11040);
    o.python_backends = [false, false];
    let mut c = Cluster::new(o);
    let mut east = common::http_backend_with(11050, "east", &["stock"]);
    let mut west = common::http_backend_with(11051, "west", &["stock"]);
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("east");
    settle_primary(&c, gw);
    let patient = move || request_within(gw, "GET / HTTP/1.1\r\n", "", Duration::from_secs(2));
    let (results, killed) = timed_load(patient, 100, 8, Duration::from_millis(1500), || {
        let _ = east.kill();
        let _ = east.wait();
    });
    let _ = west.kill();
    let _ = west.wait();
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !matches!(&r.result, Ok((200, _))))
        .map(|r| format!("at {:?} after {:?}: {:?}", r.start, r.took, r.result))
        .collect();
    // The move, as a client sees it: from the kill to the first answer by west's backend.
    let first_west = results
        .iter()
        .filter(|r| matches!(&r.result, Ok((200, b)) if b.contains("backend west")))
        .map(|r| r.start + r.took)
        .min()
        .expect("west served");
    let moved = first_west.saturating_sub(killed);
    // Each request's wait counted from when it could first have been hurt: the kill, or its
    // own start if later.
    let longest = results
        .iter()
        .map(|r| (r.start + r.took).saturating_sub(r.start.max(killed)))
        .max()
        .unwrap_or_default();
    let ok = results.len() - failed.len();
    println!(
        "{ok}/{} GETs answered within 2 s; the move took {} ms (kill to west's first answer); \
         the longest wait from the kill {} ms",
        results.len(),
        moved.as_millis(),
        longest.as_millis()
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        c.logs()
    );
    assert!(
        longest <= moved + Duration::from_millis(200),
        "a request waited {longest:?}, the move took {moved:?}"
    );
}

/// Issue 38: SIGSTOP of the primary's agent. West's gateway had passed GETs to east's
/// gateway (the hop), which now answers nothing; they hung until the client gave up. Once
/// the routing moves away from east, each is sent again where the service is now (a GET
/// is idempotent); a POST without an Idempotency-Key is answered 502 at once, with the
/// reason, instead of hanging.
#[test]
fn hops_to_a_paused_primary_are_sent_again_once_the_route_moves_away() {
    let mut c = Cluster::new(Opts::new(11080));
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("west");
    // West's gateway hops to east's: wait until it does.
    let t0 = Instant::now();
    while !get(gw).is_ok_and(|(s, b)| s == 200 && b.contains("backend east")) {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "west never hopped to east"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let pid = c.agents["east"].id().to_string();
    let post = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1600));
        let t = Instant::now();
        let r = request_within(
            gw,
            "POST /orders HTTP/1.1\r\n",
            "x=1",
            Duration::from_secs(10),
        );
        (r, t.elapsed())
    });
    let patient = move || request_within(gw, "GET / HTTP/1.1\r\n", "", Duration::from_secs(2));
    let (results, stopped) = timed_load(patient, 100, 8, Duration::from_millis(1500), || {
        common::run(Command::new("kill").args(["-STOP", &pid]));
    });
    let (post, post_took) = post.join().expect("post");
    common::run(Command::new("kill").args(["-CONT", &pid]));
    let failed: Vec<String> = results
        .iter()
        .filter(|r| !matches!(&r.result, Ok((200, _))))
        .map(|r| format!("at {:?} after {:?}: {:?}", r.start, r.took, r.result))
        .collect();
    let longest = results
        .iter()
        .map(|r| (r.start + r.took).saturating_sub(r.start.max(stopped)))
        .max()
        .unwrap_or_default();
    let first_west = results
        .iter()
        .filter(|r| matches!(&r.result, Ok((200, b)) if b.contains("backend west")))
        .map(|r| (r.start + r.took).saturating_sub(stopped))
        .min();
    println!(
        "west's backend first answered {first_west:?} after the stop; phases {}",
        c.status("west")
            .map(|s| s["failovers"].to_string())
            .unwrap_or_default()
    );
    let metrics = c.get("west", "/metrics").unwrap_or_default();
    println!(
        "{}/{} GETs through west answered within 2 s; the longest wait from the stop {} ms; \
         the POST sent at the stop: {:?} after {} ms; west's retries {}",
        results.len() - failed.len(),
        results.len(),
        longest.as_millis(),
        post.as_ref().map(|(s, b)| (s, b.trim().to_string())),
        post_took.as_millis(),
        common::metric_value(&metrics, "outlast_gateway_retries_total")
    );
    assert!(
        failed.is_empty(),
        "{} failed: {:?}\n{}",
        failed.len(),
        &failed[..failed.len().min(5)],
        c.logs()
    );
    let (code, body) = post.expect("the POST got an answer");
    assert_eq!(code, 502, "{body}");
    assert!(body.contains("not idempotent"), "{body}");
    assert!(
        post_took < Duration::from_secs(4),
        "the POST waited {post_took:?}"
    );
}

/// Waits until `gw` answers from east's backend.
fn settle_primary(c: &Cluster, gw: SocketAddr) {
    let ready = Instant::now();
    while !get(gw).is_ok_and(|(s, b)| s == 200 && b.contains("backend east")) {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "never settled\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Waits for the steady state (as the primary-standby test has): each site's gateway
/// serves a GET from its own backend (its answer contains `east_body`, `west_body`).
/// Routing can say "active" a moment before the health checks and the other gateway have
/// caught up, and requests sent then measure start-up, not what the test is about.
fn settle(c: &Cluster, east_body: &str, west_body: &str) {
    let ready = Instant::now();
    while !(get(c.gateway("east")).is_ok_and(|(s, b)| s == 200 && b.contains(east_body))
        && get(c.gateway("west")).is_ok_and(|(s, b)| s == 200 && b.contains(west_body)))
    {
        assert!(
            ready.elapsed() < Duration::from_secs(20),
            "the gateways never settled\n{}",
            c.logs()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    println!(
        "gateways settled {:?} after both sites were active",
        ready.elapsed()
    );
}

#[test]
fn active_active_loses_no_get_when_one_backend_dies() {
    let mut opts = Opts::new(7560);
    opts.mode = "active-active";
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_for("east", Duration::from_secs(20), "both sites active", |st| {
        common::all_up(st)
            && st["services"][0]["active_sites"] == serde_json::json!(["east", "west"])
    });
    let gw = c.gateway("east");
    settle(&c, "backend east", "backend west");
    let results = load(gw, 100, 5, Duration::from_millis(1500), || {
        c.kill_backend("east")
    });
    let (n, ok, by_west, failed) = summarize(&results);
    println!(
        "active-active: {ok}/{n} GETs answered 200, {by_west} by west after east's backend died"
    );
    assert_eq!(ok, n, "lost requests: {failed:?}");
    assert!(by_west > 0, "west never served");
    // West's own gateway serves too.
    assert_eq!(get(c.gateway("west")).map(|(s, _)| s), Ok(200));
}

/// Reads a request line and headers; (request line, lower-case headers, Content-Length).
fn read_head(r: &mut BufReader<TcpStream>) -> Option<(String, String, usize)> {
    let mut line = String::new();
    r.read_line(&mut line).ok()?;
    let mut head = String::new();
    let mut len = 0;
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let lower = h.to_ascii_lowercase();
        if let Some(v) = lower.strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        head.push_str(&lower);
    }
    Some((line, head, len))
}

/// A backend that answers GETs (so its health check passes) but drops every POST after
/// reading it whole, as a backend that crashes mid-request would.
fn dropping_backend(port: u16) -> Arc<AtomicUsize> {
    let posts = Arc::new(AtomicUsize::new(0));
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind backend");
    let seen = posts.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let seen = seen.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let Some((line, _, len)) = read_head(&mut r) else {
                    return;
                };
                let post = line.starts_with("POST");
                let mut body = vec![0; len];
                let _ = r.read_exact(&mut body);
                let mut s = r.into_inner();
                if post {
                    seen.fetch_add(1, Ordering::SeqCst);
                    let _ = s.shutdown(std::net::Shutdown::Both);
                } else {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                }
            });
        }
    });
    posts
}

#[test]
fn post_without_idempotency_key_is_never_sent_twice() {
    let mut opts = Opts::new(7580);
    opts.mode = "active-active";
    opts.python_backends = [false, true];
    let posts = dropping_backend(7590);
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_for(
        "east",
        Duration::from_secs(20),
        "east's backend healthy",
        |st| {
            common::all_up(st)
                && st["services"][0]["local_health"] == "up"
                && st["services"][0]["active_sites"] == serde_json::json!(["east", "west"])
        },
    );
    // The dropping backend answers GET with "ok".
    settle(&c, "ok", "backend west");
    let gw = c.gateway("east");
    let r = request(gw, "POST /order HTTP/1.1\r\n", "{\"sku\":1}");
    assert!(
        matches!(r, Ok((502, ref b)) if b.contains("not idempotent")),
        "{r:?}\n{}",
        c.logs()
    );
    assert_eq!(
        posts.load(Ordering::SeqCst),
        1,
        "the POST reached the backend exactly once"
    );

    // With an Idempotency-Key the same failure is retried on another target: west, whose
    // python server answers 501 to POST, which proves the request got there.
    let r = request(
        gw,
        "POST /order HTTP/1.1\r\nIdempotency-Key: order-42\r\n",
        "{\"sku\":1}",
    );
    assert!(matches!(r, Ok((501, _))), "{r:?}\n{}", c.logs());
    assert_eq!(posts.load(Ordering::SeqCst), 2);
}

/// Answers GET / with 200 (health) and a WebSocket upgrade with 101, then echoes bytes.
fn upgrade_echo_backend(port: u16) {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind backend");
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let Some((_, head, _)) = read_head(&mut r) else {
                    return;
                };
                let mut s = r.into_inner();
                if head.contains("upgrade: websocket") {
                    let _ = s.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf) {
                        if n == 0 || s.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                } else {
                    let _ = s.write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n",
                    );
                }
            });
        }
    });
}

#[test]
fn websocket_upgrade_and_h2c_pass_through() {
    let mut opts = Opts::new(7600);
    opts.python_backends = [false, true];
    upgrade_echo_backend(7610);
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    let mut s = TcpStream::connect(c.gateway("east")).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n")
        .expect("write");
    let mut r = BufReader::new(s.try_clone().expect("clone"));
    let mut status = String::new();
    r.read_line(&mut status).expect("status line");
    assert!(status.starts_with("HTTP/1.1 101"), "{status}");
    loop {
        let mut h = String::new();
        r.read_line(&mut h).expect("header");
        if h == "\r\n" {
            break;
        }
    }
    s.write_all(b"hello through the gateway").expect("write");
    let mut echoed = [0u8; 25];
    r.read_exact(&mut echoed).expect("echo");
    assert_eq!(&echoed, b"hello through the gateway");

    // h2c with prior knowledge, served by the same gateway.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = format!("http://{}/", c.gateway("east"));
    let (version, code) = rt.block_on(async {
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .build()
            .expect("client");
        let r = client.get(&url).send().await.expect("h2c request");
        (r.version(), r.status().as_u16())
    });
    assert_eq!(version, reqwest::Version::HTTP_2);
    assert_eq!(code, 200);
}

/// Answers GET / at once (health checks) and GET /slow after two seconds; the flag it
/// returns is raised when a GET /slow has arrived.
fn slow_backend(port: u16) -> Arc<AtomicBool> {
    let listener = TcpListener::bind(("127.0.0.1", port)).expect("bind backend");
    let arrived = Arc::new(AtomicBool::new(false));
    let flag = arrived.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let flag = flag.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stream);
                let Some((line, _, _)) = read_head(&mut r) else {
                    return;
                };
                if line.contains("/slow") {
                    flag.store(true, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_secs(2));
                }
                let mut s = r.into_inner();
                let _ = s.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nConnection: close\r\n\r\nslow\n",
                );
            });
        }
    });
    arrived
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let mut opts = Opts::new(7700);
    opts.python_backends = [false, true];
    let arrived = slow_backend(7710);
    let mut c = Cluster::new(opts);
    c.start_all();
    c.wait_healthy();
    let gw = c.gateway("east");
    let inflight = std::thread::spawn(move || request(gw, "GET /slow HTTP/1.1\r\n", ""));
    // SIGTERM once the request is at the backend (in flight through the gateway).
    let t = Instant::now();
    while !arrived.load(Ordering::SeqCst) {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "GET /slow never reached the backend"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    let t0 = Instant::now();
    let status = c
        .terminate("east", Duration::from_secs(10))
        .expect("east exits");
    assert!(status.success(), "{status:?}");
    let r = inflight.join().expect("request thread");
    assert_eq!(
        r.map(|(s, b)| (s, b.trim().to_string())),
        Ok((200, "slow".to_string())),
        "the request in flight finished"
    );
    println!(
        "SIGTERM with a request in flight: answered, agent exited 0 after {} ms",
        t0.elapsed().as_millis()
    );
    assert!(
        TcpStream::connect_timeout(&gw, Duration::from_millis(300)).is_err(),
        "no longer accepting"
    );
}
