//! RFC 2136 dynamic updates, signed with TSIG (RFC 8945, HMAC-SHA256), for users whose DNS
//! lives on another primary server. The leader replaces each name's A RRset on that server
//! whenever the committed answer changes, and retries until the server says NOERROR.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, Query, ResponseCode, UpdateMessage};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, Name, RData, Record, RecordType};
use hmac::{Hmac, Mac};
use sha2::Sha256;

/// A TSIG key: its name and secret (the bytes behind BIND's base64 `secret`).
#[derive(Clone)]
pub struct TsigKey {
    pub name: Name,
    pub secret: Vec<u8>,
}

impl std::fmt::Debug for TsigKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TsigKey")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PushError {
    #[error("cannot build the update: {0}")]
    Encode(String),
    #[error("no answer from {server}: {source}")]
    Io {
        server: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("no answer from {0} within 2 s")]
    Timeout(SocketAddr),
    #[error("{server} refused the update: {code}")]
    Refused {
        server: SocketAddr,
        code: ResponseCode,
    },
    #[error("{0} answered something that is not a DNS message")]
    Garbled(SocketAddr),
}

const HMAC_SHA256: &str = "hmac-sha256.";
const FUDGE: u16 = 300;

/// Appends a TSIG record to an encoded message and bumps its ARCOUNT.
pub fn sign(message: &mut Vec<u8>, key: &TsigKey, time_signed: u64) -> Result<(), PushError> {
    if message.len() < 12 {
        return Err(PushError::Encode("message shorter than a header".into()));
    }
    let algorithm = Name::from_ascii(HMAC_SHA256).map_err(|e| PushError::Encode(e.to_string()))?;
    let key_wire = crate::wire_name(&key.name);
    let alg_wire = crate::wire_name(&algorithm);
    let time = time_signed.to_be_bytes();
    let time48 = &time[2..8];
    let mut mac = Hmac::<Sha256>::new_from_slice(&key.secret)
        .map_err(|e| PushError::Encode(e.to_string()))?;
    mac.update(message);
    // TSIG variables (RFC 8945 4.3.3): name, class ANY, TTL 0, algorithm, time, fudge,
    // error 0, other length 0.
    mac.update(&key_wire);
    mac.update(&255u16.to_be_bytes());
    mac.update(&0u32.to_be_bytes());
    mac.update(&alg_wire);
    mac.update(time48);
    mac.update(&FUDGE.to_be_bytes());
    mac.update(&0u16.to_be_bytes());
    mac.update(&0u16.to_be_bytes());
    let digest = mac.finalize().into_bytes();
    let original_id = [message[0], message[1]];

    let mut rdata = Vec::new();
    rdata.extend_from_slice(&alg_wire);
    rdata.extend_from_slice(time48);
    rdata.extend_from_slice(&FUDGE.to_be_bytes());
    rdata.extend_from_slice(&(digest.len() as u16).to_be_bytes());
    rdata.extend_from_slice(&digest);
    rdata.extend_from_slice(&original_id);
    rdata.extend_from_slice(&0u16.to_be_bytes()); // error
    rdata.extend_from_slice(&0u16.to_be_bytes()); // other length

    message.extend_from_slice(&key_wire);
    message.extend_from_slice(&250u16.to_be_bytes()); // TYPE TSIG
    message.extend_from_slice(&255u16.to_be_bytes()); // CLASS ANY
    message.extend_from_slice(&0u32.to_be_bytes()); // TTL
    message.extend_from_slice(&(rdata.len() as u16).to_be_bytes());
    message.extend_from_slice(&rdata);
    let arcount = u16::from_be_bytes([message[10], message[11]]).wrapping_add(1);
    message[10..12].copy_from_slice(&arcount.to_be_bytes());
    Ok(())
}

/// The UPDATE that makes `name`'s A RRset exactly `addrs` (deleted when empty).
pub fn update_message(
    id: u16,
    zone: &Name,
    name: &Name,
    ttl: u32,
    addrs: &[Ipv4Addr],
) -> Result<Vec<u8>, PushError> {
    let mut msg = Message::new(id, MessageType::Query, OpCode::Update);
    let mut zone_q = Query::query(zone.clone(), RecordType::SOA);
    zone_q.set_query_class(DNSClass::IN);
    msg.add_zone(zone_q);
    // Delete the RRset (class ANY, TTL 0, no data), then add what it must hold.
    let mut delete = Record::update0(name.clone(), 0, RecordType::A);
    delete.dns_class = DNSClass::ANY;
    msg.add_update(delete);
    for ip in addrs {
        msg.add_update(Record::from_rdata(name.clone(), ttl, RData::A(A(*ip))));
    }
    msg.to_vec().map_err(|e| PushError::Encode(e.to_string()))
}

/// Sends one signed update over UDP from `source` and waits for NOERROR.
pub async fn send_update(
    server: SocketAddr,
    source: std::net::IpAddr,
    zone: &Name,
    name: &Name,
    ttl: u32,
    addrs: &[Ipv4Addr],
    key: &TsigKey,
) -> Result<(), PushError> {
    let id = (outlast_core::clock::unix_us() & 0xffff) as u16;
    let mut bytes = update_message(id, zone, name, ttl, addrs)?;
    let now = outlast_core::clock::unix_ms() / 1000;
    sign(&mut bytes, key, now)?;
    let io = |source| PushError::Io { server, source };
    let sock = tokio::net::UdpSocket::bind(SocketAddr::new(source, 0))
        .await
        .map_err(io)?;
    sock.connect(server).await.map_err(io)?;
    sock.send(&bytes).await.map_err(io)?;
    let mut buf = vec![0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf))
            .await
            .map_err(|_| PushError::Timeout(server))?
            .map_err(io)?;
        // Only the answer to this update counts.
        if n < 12 || u16::from_be_bytes([buf[0], buf[1]]) != id {
            continue;
        }
        let answer = Message::from_vec(&buf[..n]).map_err(|_| PushError::Garbled(server))?;
        return match answer.metadata.response_code {
            ResponseCode::NoError => Ok(()),
            code => Err(PushError::Refused { server, code }),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn update_replaces_the_rrset_and_signing_appends_one_record() {
        let zone = Name::from_ascii("shop.test.").expect("zone");
        let name = Name::from_ascii("db.shop.test.").expect("name");
        let mut m =
            update_message(42, &zone, &name, 5, &[Ipv4Addr::new(127, 0, 0, 12)]).expect("encode");
        let parsed = Message::from_vec(&m).expect("decode");
        assert_eq!(parsed.metadata.op_code, OpCode::Update);
        let key = TsigKey {
            name: Name::from_ascii("outlast.").expect("key"),
            secret: b"0123456789abcdef".to_vec(),
        };
        let before = m.len();
        sign(&mut m, &key, 1_700_000_000).expect("sign");
        assert_eq!(
            u16::from_be_bytes([m[10], m[11]]),
            1,
            "ARCOUNT counts the TSIG record"
        );
        // key name (9) + type/class/ttl/rdlength (10) + algorithm (13) + time/fudge (8)
        // + MAC size (2) + MAC (32) + original id, error, other length (6).
        assert_eq!(m.len() - before, 9 + 10 + 13 + 8 + 2 + 32 + 6);
        let again = {
            let mut m2 = update_message(42, &zone, &name, 5, &[Ipv4Addr::new(127, 0, 0, 12)])
                .expect("encode");
            sign(&mut m2, &key, 1_700_000_000).expect("sign");
            m2
        };
        assert_eq!(m, again, "signing is deterministic for the same time");
    }
}

/// One external primary the leader keeps in step.
#[derive(Debug, Clone)]
pub struct Target {
    pub server: SocketAddr,
    pub zone: Name,
    pub key: TsigKey,
}

/// The push loop: while `leads()` says this site leads, every external primary is made to
/// hold what the zone answers, each name replaced whenever its answer changes, each server
/// retried with back-off (200 ms doubling to 30 s) until it says NOERROR. A new leader
/// pushes everything again (the updates are idempotent replacements). Ends with `stop`.
pub async fn run(
    source: std::net::IpAddr,
    targets: Vec<Target>,
    zone: tokio::sync::watch::Receiver<std::sync::Arc<crate::ZoneView>>,
    leads: impl Fn() -> bool,
    every: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    use std::collections::BTreeMap;
    let mut acked: BTreeMap<(SocketAddr, Name), Vec<Ipv4Addr>> = BTreeMap::new();
    let mut retry_at: BTreeMap<SocketAddr, (tokio::time::Instant, Duration)> = BTreeMap::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !leads() {
            acked.clear();
            continue;
        }
        let view = zone.borrow().clone();
        if !view.ready {
            continue;
        }
        for t in &targets {
            let now = tokio::time::Instant::now();
            if retry_at.get(&t.server).is_some_and(|(at, _)| now < *at) {
                continue;
            }
            for (name, addrs) in &view.names {
                if !t.zone.zone_of(name) || acked.get(&(t.server, name.clone())) == Some(addrs) {
                    continue;
                }
                match send_update(t.server, source, &t.zone, name, view.ttl, addrs, &t.key).await {
                    Ok(()) => {
                        tracing::info!(server = %t.server, %name, ?addrs, "pushed");
                        metrics::counter!("outlast_dns_push_total", "outcome" => "ok").increment(1);
                        acked.insert((t.server, name.clone()), addrs.clone());
                        retry_at.remove(&t.server);
                    }
                    Err(e) => {
                        let wait = retry_at
                            .get(&t.server)
                            .map_or(Duration::from_millis(200), |(_, w)| {
                                (*w * 2).min(Duration::from_secs(30))
                            });
                        tracing::warn!(server = %t.server, %name, error = %e, retry_in = ?wait, "push not acknowledged");
                        metrics::counter!("outlast_dns_push_total", "outcome" => "failed")
                            .increment(1);
                        retry_at.insert(t.server, (tokio::time::Instant::now() + wait, wait));
                        break;
                    }
                }
            }
        }
    }
}

/// The push targets of a config's `[[dns.push]]`.
pub fn targets(dns: &outlast_core::config::Dns) -> Vec<Target> {
    dns.push
        .iter()
        .filter_map(|p| {
            Some(Target {
                server: p.server,
                zone: Name::from_ascii(&p.zone).ok()?,
                key: TsigKey {
                    name: Name::from_ascii(&p.key_name).ok()?,
                    secret: p.key_secret.clone(),
                },
            })
        })
        .collect()
}
