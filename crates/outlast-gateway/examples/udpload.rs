//! A UDP load generator and echo server for bench/udp.sh (not part of outlast).
//!
//!   udpload echo ADDR                      answers every datagram with itself
//!   udpload load ADDR SESSIONS SIZE RATE SECS
//!       sends RATE datagrams/s of SIZE bytes for SECS, spread round-robin over SESSIONS
//!       client sockets, and prints "sent received loss% p50_us p99_us"
//!
//! Each datagram carries its send time, so the latency is the round trip through whatever
//! is at ADDR. Answers that arrive after the run (plus 500 ms) count as lost.
#![allow(clippy::disallowed_methods)]

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |i: usize| args.get(i).cloned().unwrap_or_default();
    match arg(1).as_str() {
        "echo" => echo(arg(2).parse().expect("ADDR")),
        "load" => load(
            arg(2).parse().expect("ADDR"),
            arg(3).parse().expect("SESSIONS"),
            arg(4).parse().expect("SIZE"),
            arg(5).parse().expect("RATE"),
            arg(6).parse().expect("SECS"),
        ),
        _ => eprintln!("usage: udpload echo ADDR | load ADDR SESSIONS SIZE RATE SECS"),
    }
}

fn echo(addr: SocketAddr) {
    let s = UdpSocket::bind(addr).expect("bind");
    let _ = socket2::SockRef::from(&s).set_recv_buffer_size(4 << 20);
    let fd = s.as_raw_fd();
    const B: usize = 64;
    let mut bufs = vec![[0u8; 2048]; B];
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(B, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(B, None);
    loop {
        let mut got = Vec::with_capacity(B);
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => got.extend(msgs.map(|m| (m.bytes, m.address))),
                Err(_) => continue,
            }
        }
        let iovs: Vec<[IoSlice<'_>; 1]> = bufs
            .iter()
            .zip(&got)
            .map(|(b, (n, _))| [IoSlice::new(&b[..*n])])
            .collect();
        let to: Vec<Option<SockaddrStorage>> = got.iter().map(|(_, a)| *a).collect();
        let _ = sendmmsg(fd, &mut tx, &iovs, &to, [], MsgFlags::empty());
    }
}

fn load(to: SocketAddr, sessions: usize, size: usize, rate: u64, secs: u64) {
    let socks: Vec<Arc<UdpSocket>> = (0..sessions)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
            socket2::SockRef::from(&s)
                .set_recv_buffer_size(1 << 20)
                .expect("buffer");
            s.connect(to).expect("connect");
            s.set_nonblocking(true).expect("nonblocking");
            Arc::new(s)
        })
        .collect();
    // The clock starts once every socket is open, or their opening would be a burst.
    let start = Instant::now();
    let received = Arc::new(AtomicU64::new(0));
    let lat: Arc<Mutex<Vec<u32>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    // The receiver: epoll over every socket, on its own thread.
    let rx = {
        let (socks, received, lat, done) =
            (socks.clone(), received.clone(), lat.clone(), done.clone());
        std::thread::spawn(move || {
            use nix::sys::epoll::{Epoll, EpollCreateFlags, EpollEvent, EpollFlags, EpollTimeout};
            let ep = Epoll::new(EpollCreateFlags::empty()).expect("epoll");
            for (i, s) in socks.iter().enumerate() {
                ep.add(s.as_ref(), EpollEvent::new(EpollFlags::EPOLLIN, i as u64))
                    .expect("epoll add");
            }
            let mut events = vec![EpollEvent::empty(); 256];
            let mut buf = [0u8; 2048];
            let mut mine = Vec::with_capacity(1 << 20);
            while !done.load(Ordering::Relaxed) {
                let n = ep.wait(&mut events, EpollTimeout::from(50u16)).unwrap_or(0);
                for e in &events[..n] {
                    let s = &socks[e.data() as usize];
                    while let Ok(len) = s.recv(&mut buf) {
                        if len >= 8 {
                            let sent = u64::from_le_bytes(buf[..8].try_into().unwrap_or([0; 8]));
                            let now = start.elapsed().as_nanos() as u64;
                            mine.push((now.saturating_sub(sent) / 1000) as u32);
                        }
                        received.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            *lat.lock().expect("lat") = mine;
        })
    };
    let total = rate * secs;
    let mut payload = vec![0u8; size.max(8)];
    let mut sent = 0u64;
    let mut next = 0usize;
    while sent < total {
        // Where the schedule says we should be by now.
        let due = ((start.elapsed().as_secs_f64() * rate as f64) as u64).min(total);
        while sent < due {
            let now = start.elapsed().as_nanos() as u64;
            payload[..8].copy_from_slice(&now.to_le_bytes());
            let _ = socks[next].send(&payload);
            next = (next + 1) % socks.len();
            sent += 1;
        }
        std::thread::sleep(Duration::from_micros(200));
    }
    std::thread::sleep(Duration::from_millis(500));
    done.store(true, Ordering::Relaxed);
    let _ = rx.join();
    let got = received.load(Ordering::Relaxed);
    let mut l = lat.lock().expect("lat").clone();
    l.sort_unstable();
    let pct = |p: f64| {
        l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0)
    };
    let loss = 100.0 * (sent.saturating_sub(got)) as f64 / sent.max(1) as f64;
    println!("{sent} {got} {loss:.3} {} {}", pct(0.5), pct(0.99));
}
