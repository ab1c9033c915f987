//! The UDP path: answers compiled once per zone change, patched per packet.
//!
//! Every answer the zone can give for its own names (service names, the apex, the name
//! servers) and the common types is built once, by [`ZoneView::answer`] and hickory's
//! encoder, into the exact response bytes. A query is then answered by copying those bytes
//! and patching the ID, the RD bit and the question's letter case (same length). Negative
//! answers for unknown names reuse a compiled authority section. Anything unusual (not a
//! plain one-question query, EDNS version above 0, another class) goes through the slow
//! path, which builds the same answer with hickory's `Message`. Malformed packets get
//! FORMERR when they carry a readable header, silence otherwise. One blocking reader per
//! core, moving packets in batches.

use std::collections::HashMap;
use std::io::{IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::rdata::opt::{ClientSubnet, EdnsOption};
use hickory_proto::rr::{DNSClass, LowerName, Name, RecordType};
use hickory_proto::serialize::binary::{BinEncodable, BinEncoder};
use nix::errno::Errno;
use nix::sys::socket::{recvmmsg, sendmmsg, MsgFlags, MultiHeaders, SockaddrStorage};

use crate::steer::{Client, MAX_ANSWERS};
use crate::view::ZoneView;

const EDNS_PAYLOAD: u16 = 1232;
const TYPES: [RecordType; 5] = [
    RecordType::A,
    RecordType::AAAA,
    RecordType::SOA,
    RecordType::NS,
    RecordType::ANY,
];

/// One name's compiled responses: (qtype, with EDNS) → bytes.
type ByType = HashMap<(u16, bool), Vec<u8>>;

/// The compiled zone.
pub struct Compiled {
    view: Arc<ZoneView>,
    /// Steered names (lower-case qname wire) and their compiled picks.
    steered: HashMap<Vec<u8>, SteerCompiled>,
    zone_wire: Vec<u8>,
    /// Lower-case qname wire → (qtype, with EDNS) → full response bytes. Every name the
    /// zone has is a key, so a type not compiled for one is NODATA (slow path), never
    /// NXDOMAIN.
    answers: HashMap<Vec<u8>, ByType>,
    /// The SOA record, uncompressed, for negative answers to unknown names.
    soa_rr: Vec<u8>,
    /// The same zone as answered while the site's lease does not hold (its own primary
    /// names withheld), when that differs.
    withheld: Option<Box<Compiled>>,
}

fn response(view: &ZoneView, id: u16, rd: bool, query: Query, edns: bool) -> Option<Vec<u8>> {
    let name = LowerName::from(query.name().clone());
    let answer = view.answer(&name, query.query_type());
    encode(id, rd, query, edns, answer, None)
}

/// A response message's bytes; `ecs`, the query's client subnet with the scope that
/// decided, is echoed in the OPT record.
fn encode(
    id: u16,
    rd: bool,
    query: Query,
    edns: bool,
    answer: crate::Answer,
    ecs: Option<ClientSubnet>,
) -> Option<Vec<u8>> {
    let mut msg = Message::new(id, MessageType::Response, OpCode::Query);
    msg.metadata.recursion_desired = rd;
    msg.metadata.response_code = answer.code;
    msg.metadata.authoritative =
        !matches!(answer.code, ResponseCode::Refused | ResponseCode::ServFail);
    msg.add_query(query);
    msg.add_answers(answer.answers);
    msg.add_authorities(answer.authorities);
    msg.add_additionals(answer.additionals);
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(EDNS_PAYLOAD);
        e.set_version(0);
        if let Some(ecs) = ecs {
            e.options_mut().insert(EdnsOption::Subnet(ecs));
        }
        msg.set_edns(e);
    }
    msg.to_vec().ok()
}

/// A steered name's compiled A answers: per pick (candidate indices), without and with
/// EDNS. Picks are all ordered choices of `answers` of the candidates, when there are at
/// most [`MAX_PICKS`] of them; otherwise each is built when asked.
struct SteerCompiled {
    steer: crate::steer::Steered,
    by_pick: HashMap<PickKey, Vec<u8>>,
}

/// A pick's candidate indices (padded), how many, and whether the answer has EDNS: a key
/// built on the stack for every query.
type PickKey = ([u8; MAX_ANSWERS], u8, bool);

fn pick_key(pick: &[u8], edns: bool) -> PickKey {
    let mut k = [0u8; MAX_ANSWERS];
    let n = pick.len().min(MAX_ANSWERS);
    k[..n].copy_from_slice(&pick[..n]);
    (k, n as u8, edns)
}

const MAX_PICKS: usize = 4096;

/// Every ordered choice of `k` of `0..n`.
fn picks(n: usize, k: usize) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    for _ in 0..k {
        let mut next = Vec::new();
        for p in &out {
            for i in 0..n as u8 {
                if !p.contains(&i) {
                    let mut q = p.clone();
                    q.push(i);
                    next.push(q);
                }
            }
            if next.len() > MAX_PICKS {
                return Vec::new();
            }
        }
        out = next;
    }
    out
}

/// Adds an ECS option to a response whose last record is an OPT record with no options:
/// the query's FAMILY, SOURCE PREFIX-LENGTH and ADDRESS (`query_ecs`, the option's data as
/// asked) with `scope`. None when the response does not end so (the slow path answers).
fn append_ecs(out: &mut Vec<u8>, query_ecs: &[u8], scope: u8) -> Option<()> {
    let n = out.len();
    if n < 11 || out[n - 11] != 0 || out[n - 10..n - 8] != [0, 41] || out[n - 2..] != [0, 0] {
        return None;
    }
    let len = query_ecs.len() as u16;
    out[n - 2..].copy_from_slice(&(len + 4).to_be_bytes());
    out.extend_from_slice(&8u16.to_be_bytes());
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(query_ecs.get(..3)?);
    out.push(scope);
    out.extend_from_slice(query_ecs.get(4..)?);
    Some(())
}

/// The EDNS Client Subnet option of a query's OPT record (its RDATA is `opt`): the
/// client and the option's own bytes (FAMILY, SOURCE, SCOPE, ADDRESS). `Err` when it is
/// malformed (the slow path then answers FORMERR).
fn ecs_of(opt: &[u8]) -> Result<Option<(Client, &[u8])>, ()> {
    let mut i = 0;
    while i + 4 <= opt.len() {
        let code = u16::from_be_bytes([opt[i], opt[i + 1]]);
        let len = u16::from_be_bytes([opt[i + 2], opt[i + 3]]) as usize;
        let data = opt.get(i + 4..i + 4 + len).ok_or(())?;
        if code == 8 {
            if data.len() < 4 {
                return Err(());
            }
            let family = u16::from_be_bytes([data[0], data[1]]);
            let source = data[2];
            let bytes = &data[4..];
            let width: u8 = match family {
                1 => 32,
                2 => 128,
                _ => return Err(()),
            };
            if source > width || bytes.len() != (source as usize).div_ceil(8) || data[3] != 0 {
                return Err(());
            }
            let mut full = [0u8; 16];
            full[..bytes.len()].copy_from_slice(bytes);
            let addr = if family == 1 {
                IpAddr::from([full[0], full[1], full[2], full[3]])
            } else {
                IpAddr::from(full)
            };
            let client = Client {
                addr,
                source,
                ecs: true,
            };
            return Ok(Some((client, data)));
        }
        i += 4 + len;
    }
    if i != opt.len() {
        return Err(());
    }
    Ok(None)
}

impl Compiled {
    pub fn new(view: Arc<ZoneView>) -> Self {
        let zone_wire = crate::wire_name(&view.zone);
        let mut answers: HashMap<Vec<u8>, ByType> = HashMap::new();
        let mut names: Vec<Name> = vec![view.zone.clone()];
        names.extend(view.names.keys().cloned());
        for (site, _) in &view.name_servers {
            if let Ok(n) =
                Name::from_ascii(format!("ns-{site}")).and_then(|n| n.append_domain(&view.zone))
            {
                names.push(n);
            }
        }
        if view.ready {
            for name in &names {
                if view.withholds(name) {
                    // Known (not NXDOMAIN), answered by the slow path: SERVFAIL.
                    answers.entry(crate::wire_name(name)).or_default();
                    continue;
                }
                for t in TYPES {
                    for edns in [false, true] {
                        let mut q = Query::query(name.to_lowercase(), t);
                        q.set_query_class(DNSClass::IN);
                        if let Some(bytes) = response(&view, 0, false, q, edns) {
                            answers
                                .entry(crate::wire_name(name))
                                .or_default()
                                .insert((u16::from(t), edns), bytes);
                        }
                    }
                }
            }
        }
        let mut steered = HashMap::new();
        if view.ready {
            for (name, st) in &view.steered {
                let lname = LowerName::from(name.clone());
                let mut by_pick = HashMap::new();
                for p in picks(st.candidates.len(), st.answers.min(st.candidates.len())) {
                    let addrs: Vec<Ipv4Addr> =
                        p.iter().map(|&i| st.candidates[i as usize].addr).collect();
                    for edns in [false, true] {
                        let mut q = Query::query(name.to_lowercase(), RecordType::A);
                        q.set_query_class(DNSClass::IN);
                        let answer = view.with_addrs(&lname, RecordType::A, Some(&addrs));
                        if let Some(bytes) = encode(0, false, q, edns, answer, None) {
                            by_pick.insert(pick_key(&p, edns), bytes);
                        }
                    }
                }
                steered.insert(
                    crate::wire_name(name),
                    SteerCompiled {
                        steer: st.clone(),
                        by_pick,
                    },
                );
            }
        }
        let soa_rr = view
            .answer(&LowerName::from(&view.zone), RecordType::SOA)
            .answers
            .first()
            .and_then(|r| {
                let mut buf = Vec::new();
                // Canonical form: no compression pointers, so the bytes stand anywhere.
                let mut enc = BinEncoder::new(&mut buf);
                enc.set_canonical_form(true);
                r.emit(&mut enc).ok()?;
                Some(buf)
            })
            .unwrap_or_default();
        let withheld = view
            .withheld()
            .map(|w| Box::new(Compiled::new(Arc::new(w))));
        Compiled {
            view,
            steered,
            zone_wire,
            answers,
            soa_rr,
            withheld,
        }
    }

    /// The answer to one packet from `from`, or `None` to stay silent.
    pub fn answer(&self, packet: &[u8], from: Option<IpAddr>) -> Option<Vec<u8>> {
        match self.fast(packet, from) {
            Some(r) => Some(r),
            None => self.slow(packet, from),
        }
    }

    fn fast(&self, p: &[u8], from: Option<IpAddr>) -> Option<Vec<u8>> {
        if p.len() < 17 || p[2] & 0xF8 != 0 {
            return None; // a response, or an opcode other than QUERY
        }
        let counts = |i: usize| u16::from_be_bytes([p[i], p[i + 1]]);
        let (qd, an, ns, ar) = (counts(4), counts(6), counts(8), counts(10));
        if qd != 1 || an != 0 || ns != 0 || ar > 1 {
            return None;
        }
        let mut i = 12;
        let mut lower = Vec::with_capacity(64);
        loop {
            let len = *p.get(i)? as usize;
            if len & 0xC0 != 0 {
                return None; // compression in a question: slow path
            }
            lower.push(len as u8);
            i += 1;
            if len == 0 {
                break;
            }
            lower.extend(p.get(i..i + len)?.iter().map(u8::to_ascii_lowercase));
            i += len;
        }
        let qname_end = i;
        let qtype = u16::from_be_bytes([*p.get(i)?, *p.get(i + 1)?]);
        let qclass = u16::from_be_bytes([*p.get(i + 2)?, *p.get(i + 3)?]);
        let question_end = i + 4;
        if qclass != 1 {
            return None;
        }
        let mut opt: &[u8] = &[];
        let edns = if ar == 1 {
            // Only a plain OPT record: root owner, type 41, version 0.
            let o = p.get(question_end..question_end + 11)?;
            if o[0] != 0 || u16::from_be_bytes([o[1], o[2]]) != 41 || o[6] != 0 {
                return None;
            }
            let rdlen = u16::from_be_bytes([o[9], o[10]]) as usize;
            opt = p.get(question_end + 11..question_end + 11 + rdlen)?;
            true
        } else {
            if question_end != p.len() {
                return None;
            }
            false
        };
        if !self.view.ready {
            return None;
        }
        let rd = p[2] & 0x01;
        if qtype == 1 {
            if let Some(sc) = self.steered.get(lower.as_slice()) {
                let (client, ecs) = match ecs_of(opt).ok()? {
                    Some((c, bytes)) if c.source > 0 => (c, Some(bytes)),
                    // SOURCE 0: the client asks that its address not be used.
                    Some((_, bytes)) => (Client::resolver(from?), Some(bytes)),
                    None => (Client::resolver(from?), None),
                };
                let pick = sc
                    .steer
                    .pick(&client, &self.view.networks, &self.view.latencies);
                let Some(compiled) = sc.by_pick.get(&pick_key(pick.indices(), edns)) else {
                    return None; // too many picks to compile: the slow path
                };
                let mut out = Vec::with_capacity(compiled.len() + 24);
                out.extend_from_slice(compiled);
                out[0] = p[0];
                out[1] = p[1];
                out[2] = (out[2] & !0x01) | rd;
                out.get_mut(12..qname_end)?
                    .copy_from_slice(&p[12..qname_end]);
                if let Some(bytes) = ecs {
                    let scope = if client.ecs { pick.scope } else { 0 };
                    append_ecs(&mut out, bytes, scope)?;
                }
                return Some(out);
            }
        }
        if let Some(types) = self.answers.get(lower.as_slice()) {
            let t = types.get(&(qtype, edns))?;
            let mut out = t.clone();
            out[0] = p[0];
            out[1] = p[1];
            out[2] = (out[2] & !0x01) | rd;
            // The question, byte for byte as asked (the case may differ).
            out.get_mut(12..qname_end)?
                .copy_from_slice(&p[12..qname_end]);
            // An answer that is the same for every client says so: scope 0.
            if let Some((_, bytes)) = ecs_of(opt).ok()? {
                append_ecs(&mut out, bytes, 0)?;
            }
            return Some(out);
        }
        // In the zone but not a name it has: NXDOMAIN with the SOA; outside: REFUSED.
        let in_zone = lower.len() >= self.zone_wire.len() && lower.ends_with(&self.zone_wire) && {
            // the match must start at a label boundary
            let start = lower.len() - self.zone_wire.len();
            let mut j = 0;
            while j < start {
                j += lower[j] as usize + 1;
            }
            j == start
        };
        let mut out = Vec::with_capacity(question_end + self.soa_rr.len() + 11);
        out.extend_from_slice(&p[0..2]);
        let (rcode, nscount) = if in_zone { (3u8, 1u16) } else { (5u8, 0u16) };
        let aa = if in_zone { 0x04 } else { 0 };
        out.push(0x80 | aa | rd);
        out.push(rcode);
        out.extend_from_slice(&1u16.to_be_bytes());
        out.extend_from_slice(&0u16.to_be_bytes());
        out.extend_from_slice(&nscount.to_be_bytes());
        out.extend_from_slice(&u16::from(edns).to_be_bytes());
        out.extend_from_slice(&p[12..question_end]);
        if in_zone {
            out.extend_from_slice(&self.soa_rr);
        }
        if edns {
            out.push(0);
            out.extend_from_slice(&41u16.to_be_bytes());
            out.extend_from_slice(&EDNS_PAYLOAD.to_be_bytes());
            out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
            if let Some((_, bytes)) = ecs_of(opt).ok()? {
                append_ecs(&mut out, bytes, 0)?;
            }
        }
        Some(out)
    }

    fn slow(&self, p: &[u8], from: Option<IpAddr>) -> Option<Vec<u8>> {
        let msg = match Message::from_vec(p) {
            Ok(m) => m,
            Err(_) => {
                // FORMERR to anything with a readable query header; silence otherwise.
                if p.len() < 12 || p[2] & 0x80 != 0 {
                    return None;
                }
                let mut out = Vec::with_capacity(12);
                out.extend_from_slice(&p[0..2]);
                out.push(0x80 | (p[2] & 0x79));
                out.push(1);
                out.extend_from_slice(&[0; 8]);
                return Some(out);
            }
        };
        if msg.metadata.message_type != MessageType::Query {
            return None;
        }
        let code = crate::view::refusal(msg.metadata.op_code, msg.queries.len()).or_else(|| {
            msg.edns
                .as_ref()
                .is_some_and(|e| e.version() > 0)
                .then_some(ResponseCode::BADVERS)
        });
        let edns = msg.edns.is_some();
        match code {
            None => {
                let query = msg.queries[0].clone();
                let ecs = crate::steer::ecs_option(msg.edns.as_ref());
                let client = Client::of(ecs, from);
                let name = LowerName::from(query.name().clone());
                let (answer, pick) =
                    self.view
                        .answer_for(&name, query.query_type(), client.as_ref());
                let echo = ecs.map(|mut s| match client {
                    Some(c) => c.echo(s, pick.as_ref()),
                    None => {
                        s.set_scope_prefix(0);
                        s
                    }
                });
                encode(
                    msg.metadata.id,
                    msg.metadata.recursion_desired,
                    query,
                    edns,
                    answer,
                    echo,
                )
            }
            Some(code) => {
                let mut out =
                    Message::new(msg.metadata.id, MessageType::Response, msg.metadata.op_code);
                out.metadata.response_code = code;
                out.metadata.recursion_desired = msg.metadata.recursion_desired;
                if edns {
                    let mut e = Edns::new();
                    e.set_max_payload(EDNS_PAYLOAD);
                    e.set_rcode_high(code.high());
                    out.set_edns(e);
                }
                out.to_vec().ok()
            }
        }
    }
}

/// The compiled zone the UDP readers answer from, swapped on every zone change. Readers
/// keep their own `Arc` and look at `generation` (a plain load, no shared write) to learn
/// that it changed, so the hot path never touches a lock or a shared reference count.
pub struct Published {
    current: RwLock<Arc<Compiled>>,
    generation: AtomicU64,
}

impl Published {
    pub fn new(first: Compiled) -> Self {
        Published {
            current: RwLock::new(Arc::new(first)),
            generation: AtomicU64::new(0),
        }
    }

    pub fn publish(&self, next: Compiled) {
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.generation.fetch_add(1, Ordering::Release);
    }

    fn load(&self) -> (u64, Arc<Compiled>) {
        let generation = self.generation.load(Ordering::Acquire);
        let c = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        (generation, c)
    }
}

/// Packets taken or sent per system call.
const BATCH: usize = 32;
/// Largest query read; anything longer is cut and then refused as malformed.
const MAX_QUERY: usize = 4096;

/// Serves UDP on `addr` until `stop` is set: one reader thread per core on one socket,
/// each taking and sending up to [`BATCH`] packets per system call (recvmmsg/sendmmsg).
/// One socket rather than one per core with SO_REUSEPORT: the kernel's hash then cannot
/// leave one reader idle while another is swamped, and no other process can join the
/// port; measured in bench/dns.sh, the CPU per answer was the same either way.
pub fn serve_udp(
    addr: SocketAddr,
    published: Arc<Published>,
    lease: Arc<outlast_core::clock::LeaseClock>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<std::thread::JoinHandle<()>>> {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let socket = UdpSocket::bind(addr)?;
    socket.set_read_timeout(Some(Duration::from_millis(200)))?;
    let mut sockets = Vec::with_capacity(workers);
    for _ in 0..workers {
        sockets.push(socket.try_clone()?);
    }
    let mut threads = Vec::new();
    for (i, s) in sockets.into_iter().enumerate() {
        let published = published.clone();
        let stop = stop.clone();
        let lease = lease.clone();
        threads.push(
            std::thread::Builder::new()
                .name(format!("dns-udp-{i}"))
                .spawn(move || udp_reader(&s, &published, &lease, &stop))?,
        );
    }
    Ok(threads)
}

fn source_ip(a: &SockaddrStorage) -> Option<IpAddr> {
    if let Some(v4) = a.as_sockaddr_in() {
        return Some(IpAddr::V4(v4.ip()));
    }
    a.as_sockaddr_in6().map(|v6| IpAddr::V6(v6.ip()))
}

fn udp_reader(
    s: &UdpSocket,
    published: &Published,
    lease: &outlast_core::clock::LeaseClock,
    stop: &AtomicBool,
) {
    let fd = s.as_raw_fd();
    let answered = metrics::counter!("outlast_dns_queries_total", "path" => "udp");
    let (mut generation, mut compiled) = published.load();
    let mut bufs = vec![[0u8; MAX_QUERY]; BATCH];
    let mut rx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut tx = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let mut got: Vec<(usize, Option<SockaddrStorage>)> = Vec::with_capacity(BATCH);
    let mut outs: Vec<Vec<u8>> = Vec::with_capacity(BATCH);
    let mut to: Vec<Option<SockaddrStorage>> = Vec::with_capacity(BATCH);
    while !stop.load(Ordering::Relaxed) {
        got.clear();
        {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs
                .iter_mut()
                .map(|b| [IoSliceMut::new(b.as_mut_slice())])
                .collect();
            match recvmmsg(fd, &mut rx, iovs.iter_mut(), MsgFlags::MSG_WAITFORONE, None) {
                Ok(msgs) => got.extend(msgs.map(|m| {
                    let len = if m.flags.contains(MsgFlags::MSG_TRUNC) {
                        0 // cut: too long to be a query we answer
                    } else {
                        m.bytes
                    };
                    (len, m.address)
                })),
                Err(Errno::EAGAIN | Errno::EINTR) => continue,
                Err(e) => {
                    tracing::debug!(error = %e, "DNS receive failed");
                    continue;
                }
            }
        }
        if published.generation.load(Ordering::Acquire) != generation {
            (generation, compiled) = published.load();
        }
        outs.clear();
        to.clear();
        // Once per batch: a site whose lease ran out withholds its own primary names.
        let serving = match (&compiled.withheld, lease.holds()) {
            (Some(w), false) => &**w,
            _ => &*compiled,
        };
        for (buf, (len, from)) in bufs.iter().zip(&got) {
            if let Some(out) = serving.answer(&buf[..*len], from.as_ref().and_then(source_ip)) {
                outs.push(out);
                to.push(*from);
            }
        }
        answered.increment(outs.len() as u64);
        let mut sent = 0;
        // A full send buffer can take part of a batch; the rest is offered again, a
        // bounded number of times (UDP may drop, as the network would).
        for _ in 0..4 {
            if sent == outs.len() {
                break;
            }
            let iovs: Vec<[IoSlice<'_>; 1]> =
                outs[sent..].iter().map(|o| [IoSlice::new(o)]).collect();
            match sendmmsg(fd, &mut tx, &iovs, &to[sent..], [], MsgFlags::empty()) {
                Ok(r) => sent += r.count(),
                Err(Errno::EINTR | Errno::EAGAIN) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "DNS send failed");
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::Ipv4Addr;

    use super::*;

    fn compiled() -> Compiled {
        let zone = Name::from_ascii("shop.test.").expect("zone");
        let mut names = BTreeMap::new();
        names.insert(
            Name::from_ascii("db.shop.test.").expect("db"),
            vec![Ipv4Addr::new(127, 0, 0, 11)],
        );
        Compiled::new(Arc::new(ZoneView {
            zone,
            ready: true,
            serial: 3,
            ttl: 5,
            name_servers: vec![("east".into(), Ipv4Addr::new(127, 0, 0, 11))],
            names,
            steered: BTreeMap::new(),
            networks: Arc::default(),
            latencies: Arc::default(),
            own: Default::default(),
            withheld: false,
        }))
    }

    fn query(name: &str, t: RecordType, edns: bool) -> Vec<u8> {
        let mut m = Message::new(0xbeef, MessageType::Query, OpCode::Query);
        m.metadata.recursion_desired = true;
        let mut q = Query::query(Name::from_ascii(name).expect("name"), t);
        q.set_query_class(DNSClass::IN);
        m.add_query(q);
        if edns {
            m.set_edns(Edns::new());
        }
        m.to_vec().expect("encode")
    }

    /// Whatever path answers, the answer must equal the slow path's, which is hickory's
    /// encoding of `ZoneView::answer`.
    #[test]
    fn fast_answers_decode_to_what_the_slow_path_gives() {
        let c = compiled();
        for name in [
            "db.shop.test.",
            "DB.Shop.TEST.",
            "shop.test.",
            "ns-east.shop.test.",
            "nope.shop.test.",
            "deep.nope.shop.test.",
            "example.com.",
            "test.",
        ] {
            for t in [
                RecordType::A,
                RecordType::SOA,
                RecordType::NS,
                RecordType::AAAA,
                RecordType::MX,
            ] {
                for edns in [false, true] {
                    let q = query(name, t, edns);
                    let fast = c.answer(&q, None).expect("an answer");
                    let slow = c.slow(&q, None).expect("slow");
                    let (f, s) = (
                        Message::from_vec(&fast).expect("fast decodes"),
                        Message::from_vec(&slow).expect("slow decodes"),
                    );
                    assert_eq!(f.metadata.id, 0xbeef);
                    assert_eq!(
                        f.metadata.response_code, s.metadata.response_code,
                        "{name} {t}"
                    );
                    assert_eq!(
                        f.metadata.authoritative, s.metadata.authoritative,
                        "{name} {t}"
                    );
                    assert!(f.metadata.recursion_desired);
                    assert_eq!(f.queries, s.queries, "{name} {t}: the question as asked");
                    assert_eq!(f.answers, s.answers, "{name} {t}");
                    assert_eq!(f.authorities, s.authorities, "{name} {t}");
                    assert_eq!(f.additionals, s.additionals, "{name} {t}");
                    assert_eq!(f.edns.is_some(), edns, "{name} {t}");
                }
            }
        }
    }

    #[test]
    fn garbage_gets_formerr_or_silence() {
        let c = compiled();
        assert_eq!(c.answer(&[1, 2], None), None, "no header: silence");
        let mut junk = vec![
            0x12, 0x34, 0x01, 0x00, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 3, b'a',
        ];
        let r = c.answer(&junk, None).expect("FORMERR");
        assert_eq!(r[3] & 0x0f, 1);
        junk[2] = 0x80; // a response: never answered
        assert_eq!(c.answer(&junk, None), None);
    }

    // Hostile packets: random bytes, and real queries with bytes changed, cut or added.
    // Never a panic; an answer, when given, carries the query's id and is a response.
    // PROPTEST_CASES sets the count (scripts/fuzz runs 100,000).
    proptest::proptest! {
        #[test]
        fn hostile_packets_get_formerr_or_silence_never_a_panic(
            random in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600),
            at in proptest::prelude::any::<usize>(),
            byte in proptest::prelude::any::<u8>(),
            cut in proptest::prelude::any::<usize>(),
            edns in proptest::prelude::any::<bool>(),
        ) {
            let c = compiled();
            let mut q = query("db.shop.test.", RecordType::A, edns);
            let i = at % q.len();
            q[i] = byte;
            q.truncate(1 + cut % q.len());
            q.extend_from_slice(&random[..random.len().min(40)]);
            for packet in [&random, &q] {
                if let Some(r) = c.answer(packet, None) {
                    proptest::prop_assert!(r.len() >= 12);
                    proptest::prop_assert_eq!(&r[..2], &packet[..2]);
                    proptest::prop_assert!(r[2] & 0x80 != 0, "a response");
                }
            }
        }
    }
}
