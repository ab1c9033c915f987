//! The zone as data: what every name in it answers, built from committed routing.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, NS, SOA};
use hickory_proto::rr::{LowerName, Name, RData, Record, RecordType};

use crate::steer::{Client, Latencies, Networks, Pick, Steered};

/// The zone as every site answers it.
#[derive(Debug, Clone, PartialEq)]
pub struct ZoneView {
    pub zone: Name,
    /// SERVFAIL for everything until the first health round has completed.
    pub ready: bool,
    /// SOA serial: the committed epoch.
    pub serial: u32,
    pub ttl: u32,
    /// Name server per site: (site name, address).
    pub name_servers: Vec<(String, Ipv4Addr)>,
    /// A records per owner name (lower-case, fully qualified).
    pub names: BTreeMap<Name, Vec<Ipv4Addr>>,
    /// Names whose A answer depends on the client (also in `names`, with every healthy
    /// site, for other types and clients not known).
    pub steered: BTreeMap<Name, Steered>,
    /// Client networks for `nearest`.
    pub networks: Arc<Networks>,
    /// Measured round trips for `latency`.
    pub latencies: Arc<Latencies>,
    /// Primary-standby names that the answering site answers with itself: it names itself
    /// only while its lease holds (a site whose lease ran out may have been moved away
    /// from by a decision it has not learnt yet).
    pub own: std::collections::BTreeSet<Name>,
    /// This view is the one answered while the lease does not hold: `own` names get
    /// SERVFAIL.
    pub withheld: bool,
}

/// One query's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
    pub additionals: Vec<Record>,
}

impl Answer {
    fn code(code: ResponseCode) -> Self {
        Answer {
            code,
            answers: vec![],
            authorities: vec![],
            additionals: vec![],
        }
    }

    /// AA is set on every answer from the zone; not on a refusal or a failure.
    pub fn authoritative(&self) -> bool {
        !matches!(self.code, ResponseCode::Refused | ResponseCode::ServFail)
    }
}

/// The answer to a query that is not a plain one-question QUERY, or `None` to answer it:
/// another opcode is not implemented, another number of questions is a format error.
pub fn refusal(op_code: hickory_proto::op::OpCode, questions: usize) -> Option<ResponseCode> {
    if op_code != hickory_proto::op::OpCode::Query {
        Some(ResponseCode::NotImp)
    } else if questions != 1 {
        Some(ResponseCode::FormErr)
    } else {
        None
    }
}

fn ns_name(zone: &Name, site: &str) -> Name {
    Name::from_ascii(format!("ns-{site}"))
        .and_then(|n| n.append_domain(zone))
        .unwrap_or_else(|_| zone.clone())
}

impl ZoneView {
    /// A zone that answers SERVFAIL to everything (before the first health round).
    pub fn not_ready(zone: Name) -> Self {
        ZoneView {
            zone,
            ready: false,
            serial: 0,
            ttl: 5,
            name_servers: vec![],
            names: BTreeMap::new(),
            steered: BTreeMap::new(),
            networks: Arc::default(),
            latencies: Arc::default(),
            own: Default::default(),
            withheld: false,
        }
    }

    /// The view answered while this site's lease does not hold: its own primary-standby
    /// names answer SERVFAIL (so a resolver asks a site whose routing is current), the rest
    /// as committed. None when it would be the same view.
    pub fn withheld(&self) -> Option<ZoneView> {
        (!self.own.is_empty() && !self.withheld).then(|| ZoneView {
            withheld: true,
            ..self.clone()
        })
    }

    /// Whether `name` answers SERVFAIL in this view though the zone is ready.
    pub(crate) fn withholds(&self, name: &Name) -> bool {
        self.withheld && self.own.contains(name)
    }

    /// The pick for a steered name's A answer, if `name` is steered.
    pub fn pick(&self, name: &Name, client: &Client) -> Option<(&Steered, Pick)> {
        let s = self.steered.get(name)?;
        Some((s, s.pick(client, &self.networks, &self.latencies)))
    }

    /// Why `name` answers what it does for `client`, in words.
    pub fn explain(&self, name: &Name, client: &Client) -> String {
        let owner = name.to_lowercase();
        if !self.ready {
            return "not ready: no committed state yet, every query gets SERVFAIL".into();
        }
        if self.withholds(&owner) {
            return "this site's lease has run out: it does not name itself as a primary, SERVFAIL"
                .into();
        }
        match (self.steered.get(&owner), self.names.get(&owner)) {
            (Some(s), _) => s.explain(client, &self.networks, &self.latencies),
            (None, Some(addrs)) if addrs.is_empty() => {
                "no healthy site and nothing known before: NODATA".into()
            }
            (None, Some(addrs)) => format!(
                "not steered (or no more healthy sites than it lists): every client gets {}; scope /0",
                addrs.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
            ),
            (None, None) => "not a name in the zone: NXDOMAIN".into(),
        }
    }

    fn soa(&self) -> Record {
        let mname = self
            .name_servers
            .first()
            .map(|(s, _)| ns_name(&self.zone, s))
            .unwrap_or_else(|| self.zone.clone());
        let rname = Name::from_ascii("hostmaster")
            .and_then(|n| n.append_domain(&self.zone))
            .unwrap_or_else(|_| self.zone.clone());
        // Refresh, retry and expire matter to secondaries; minimum is the negative TTL.
        let soa = SOA::new(mname, rname, self.serial, 60, 10, 3600, self.ttl);
        Record::from_rdata(self.zone.clone(), self.ttl, RData::SOA(soa))
    }

    fn a_records(&self, owner: &Name, addrs: &[Ipv4Addr]) -> Vec<Record> {
        addrs
            .iter()
            .map(|ip| Record::from_rdata(owner.clone(), self.ttl, RData::A(A(*ip))))
            .collect()
    }

    fn ns_records(&self) -> (Vec<Record>, Vec<Record>) {
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for (site, ip) in &self.name_servers {
            let host = ns_name(&self.zone, site);
            ns.push(Record::from_rdata(
                self.zone.clone(),
                self.ttl,
                RData::NS(NS(host.clone())),
            ));
            glue.push(Record::from_rdata(host, self.ttl, RData::A(A(*ip))));
        }
        (ns, glue)
    }

    /// The answer to one question. Pure, so every case is a unit test.
    pub fn answer(&self, name: &LowerName, qtype: RecordType) -> Answer {
        self.answer_for(name, qtype, None).0
    }

    /// The answer to one question from `client`: a steered name's A records are its pick
    /// (returned too, for the ECS scope).
    pub fn answer_for(
        &self,
        name: &LowerName,
        qtype: RecordType,
        client: Option<&Client>,
    ) -> (Answer, Option<Pick>) {
        let owner = Name::from(name.clone());
        if let (Some(c), RecordType::A | RecordType::ANY, true) = (client, qtype, self.ready) {
            if let Some((s, pick)) = self.pick(&owner, c) {
                let addrs: Vec<Ipv4Addr> = pick
                    .indices()
                    .iter()
                    .map(|&i| s.candidates[i as usize].addr)
                    .collect();
                return (self.with_addrs(name, qtype, Some(&addrs)), Some(pick));
            }
        }
        (self.with_addrs(name, qtype, None), None)
    }

    /// The answer, with `addrs` in place of the name's own A records when given.
    pub(crate) fn with_addrs(
        &self,
        name: &LowerName,
        qtype: RecordType,
        addrs: Option<&[Ipv4Addr]>,
    ) -> Answer {
        let zone = LowerName::from(&self.zone);
        // Zone transfers are refused, as servers without an allow-list do: the zone's
        // names are not for anyone to list.
        if !zone.zone_of(name) || matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
            return Answer::code(ResponseCode::Refused);
        }
        let owner = Name::from(name.clone());
        if !self.ready || self.withholds(&owner) {
            return Answer::code(ResponseCode::ServFail);
        }
        let nodata = |s: &Self| Answer {
            code: ResponseCode::NoError,
            answers: vec![],
            authorities: vec![s.soa()],
            additionals: vec![],
        };
        if *name == zone {
            return match qtype {
                RecordType::SOA => Answer {
                    code: ResponseCode::NoError,
                    answers: vec![self.soa()],
                    authorities: vec![],
                    additionals: vec![],
                },
                RecordType::NS => {
                    let (ns, glue) = self.ns_records();
                    Answer {
                        code: ResponseCode::NoError,
                        answers: ns,
                        authorities: vec![],
                        additionals: glue,
                    }
                }
                _ => nodata(self),
            };
        }
        let ns_host = self
            .name_servers
            .iter()
            .find(|(s, _)| ns_name(&self.zone, s) == owner);
        if let Some((_, ip)) = ns_host {
            return match qtype {
                RecordType::A => Answer {
                    code: ResponseCode::NoError,
                    answers: self.a_records(&owner, &[*ip]),
                    authorities: vec![],
                    additionals: vec![],
                },
                _ => nodata(self),
            };
        }
        match self.names.get(&owner).map(|own| addrs.unwrap_or(own)) {
            Some(addrs) => match qtype {
                RecordType::A | RecordType::ANY if !addrs.is_empty() => Answer {
                    code: ResponseCode::NoError,
                    answers: self.a_records(&owner, addrs),
                    authorities: vec![],
                    additionals: vec![],
                },
                _ => nodata(self),
            },
            None => Answer {
                code: ResponseCode::NXDomain,
                answers: vec![],
                authorities: vec![self.soa()],
                additionals: vec![],
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn view() -> ZoneView {
        let zone = Name::from_ascii("shop.test.").expect("zone");
        let mut names = BTreeMap::new();
        names.insert(
            Name::from_ascii("www.shop.test.").expect("www"),
            vec![Ipv4Addr::new(127, 0, 0, 11), Ipv4Addr::new(127, 0, 0, 12)],
        );
        names.insert(Name::from_ascii("db.shop.test.").expect("db"), vec![]);
        ZoneView {
            zone,
            ready: true,
            serial: 7,
            ttl: 5,
            name_servers: vec![("east".into(), Ipv4Addr::new(127, 0, 0, 11))],
            names,
            steered: BTreeMap::new(),
            networks: Arc::default(),
            latencies: Arc::default(),
            own: [Name::from_ascii("db.shop.test.").expect("db")].into(),
            withheld: false,
        }
    }

    fn q(name: &str) -> LowerName {
        LowerName::from(Name::from_ascii(name).expect("name"))
    }

    #[test]
    fn service_names_answer_their_sites() {
        let a = view().answer(&q("WWW.shop.test."), RecordType::A);
        assert_eq!(a.code, ResponseCode::NoError);
        assert_eq!(a.answers.len(), 2);
        assert!(a.answers.iter().all(|r| r.ttl == 5));
    }

    #[test]
    fn unknown_is_nxdomain_out_of_zone_is_refused_empty_is_nodata() {
        let v = view();
        let a = v.answer(&q("nope.shop.test."), RecordType::A);
        assert_eq!(a.code, ResponseCode::NXDomain);
        assert_eq!(a.authorities.len(), 1, "negative answers carry the SOA");
        assert_eq!(
            v.answer(&q("example.com."), RecordType::A).code,
            ResponseCode::Refused
        );
        let a = v.answer(&q("db.shop.test."), RecordType::A);
        assert_eq!(
            (a.code, a.answers.len(), a.authorities.len()),
            (ResponseCode::NoError, 0, 1)
        );
        let a = v.answer(&q("www.shop.test."), RecordType::AAAA);
        assert_eq!((a.code, a.answers.len()), (ResponseCode::NoError, 0));
    }

    #[test]
    fn apex_has_soa_with_the_epoch_and_ns_with_glue() {
        let v = view();
        let a = v.answer(&q("shop.test."), RecordType::SOA);
        match &a.answers[0].data {
            RData::SOA(soa) => assert_eq!(soa.serial, 7),
            other => panic!("{other:?}"),
        }
        let a = v.answer(&q("shop.test."), RecordType::NS);
        assert_eq!((a.answers.len(), a.additionals.len()), (1, 1));
        let a = v.answer(&q("ns-east.shop.test."), RecordType::A);
        assert_eq!(a.answers.len(), 1);
    }

    #[test]
    fn a_site_whose_lease_ran_out_withholds_only_its_own_primary_names() {
        let v = view().withheld().expect("db is this site's");
        assert_eq!(
            v.answer(&q("db.shop.test."), RecordType::A).code,
            ResponseCode::ServFail
        );
        assert_eq!(
            v.answer(&q("www.shop.test."), RecordType::A).answers.len(),
            2
        );
        let mut none = view();
        none.own.clear();
        assert!(
            none.withheld().is_none(),
            "nothing to withhold: the same view"
        );
    }

    #[test]
    fn zone_transfers_are_refused() {
        let v = view();
        for t in [RecordType::AXFR, RecordType::IXFR] {
            let a = v.answer(&q("shop.test."), t);
            assert_eq!((a.code, a.answers.len()), (ResponseCode::Refused, 0), "{t}");
            assert!(!a.authoritative());
        }
    }

    #[test]
    fn servfail_until_ready() {
        let mut v = view();
        v.ready = false;
        assert_eq!(
            v.answer(&q("www.shop.test."), RecordType::A).code,
            ResponseCode::ServFail
        );
        assert_eq!(
            v.answer(&q("example.com."), RecordType::A).code,
            ResponseCode::Refused
        );
    }
}
