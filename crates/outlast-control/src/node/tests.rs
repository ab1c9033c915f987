use std::collections::{BTreeMap, BTreeSet};

use outlast_core::config::{Failback, Mode};

use super::*;
use crate::policy::ServiceParams;
use crate::state::{Proposal, ServiceState};

const LEASE: u64 = 1000;
const MARGIN: u64 = 225;

fn cfg(me: &str) -> NodeConfig {
    let sites = vec![
        ("east".to_string(), false),
        ("west".to_string(), false),
        ("witness".to_string(), true),
    ];
    NodeConfig {
        me: me.into(),
        params: Params {
            sites: sites.iter().map(|(n, _)| n.clone()).collect(),
            quorum: 2,
            grace_ms: 500,
            detection_ms: 800,
            lease_ms: LEASE,
            margin_ms: MARGIN,
            failback_after_ms: 30_000,
            report_ttl_ms: 1000,
            services: vec![ServiceParams {
                name: "db".into(),
                mode: Mode::PrimaryStandby,
                preferred: Some("east".into()),
                failback: Failback::Auto,
                sites: vec!["east".into(), "west".into()],
                max_lag_bytes: None,
            }],
        },
        sites,
        fall: 3,
        rise: 3,
        probe_ms: 100,
        election_timeout_min_ms: 300,
    }
}

fn initial() -> ClusterState {
    let mut services = BTreeMap::new();
    services.insert(
        "db".to_string(),
        ServiceState {
            mode: Mode::PrimaryStandby,
            primary: Some("east".into()),
            active_sites: vec!["east".into()],
            epoch: 0,
            hold_ms: 0,
            from: None,
            reason: None,
            sync_set: None,
        },
    );
    ClusterState {
        epoch: 0,
        sites: ["east", "west", "witness"]
            .iter()
            .map(|s| (s.to_string(), SiteState::Up))
            .collect(),
        services,
        maintenance: Default::default(),
        history: Default::default(),
        deps: Default::default(),
    }
}

/// The state after `db` moved east -> west at epoch 1.
fn moved() -> (ClusterState, Vec<Decision>) {
    let mut s = initial();
    let d = Decision::PrimaryMove {
        service: "db".into(),
        from: Some("east".into()),
        to: "west".into(),
        reason: crate::state::MoveReason::Failover,
        hold_ms: LEASE + MARGIN,
    };
    let p = Proposal {
        at_ms: 0,
        silent_ms: Default::default(),
        base_epoch: 0,
        decisions: vec![d.clone()],
    };
    assert!(s.apply(&p).is_some());
    (s, vec![d])
}

fn report(site: &str, applied: u64, acting: &[&str], grant_age_east: u64) -> Report {
    Report {
        site: site.into(),
        applied_epoch: applied,
        fenced: false,
        peers: BTreeMap::new(),
        services: BTreeMap::new(),
        acting: acting.iter().map(|s| s.to_string()).collect(),
        leader: None,
        grant_age_ms: [("east".to_string(), grant_age_east)].into_iter().collect(),
        db_primary: vec![],
        handed_over: Default::default(),
        db_sync: Default::default(),
        db_lsn: Default::default(),
        db_role: Default::default(),
        db_replay_age_ms: Default::default(),
        deps: Default::default(),
        rtt_us: Default::default(),
    }
}

const ANSWER: Answer = Answer {
    log_epoch: 1,
    applied_epoch: 1,
};

/// West after the move, holding its lease through the witness's answers.
fn west_promoted(at: u64) -> Node {
    let mut n = Node::new(cfg("west"), initial(), 0);
    let (state, decisions) = moved();
    n.applied(&state, &decisions, at);
    n.on_answer("witness", at, ANSWER, at);
    n
}

#[test]
fn a_new_primary_acts_once_a_majority_of_promises_to_the_old_one_ran_out() {
    let at = 5_000;
    let mut west = west_promoted(at);
    assert!(west.holds_lease(at + 10));
    // Its own promise to east ran out long ago (it granted nothing since it started at
    // 0); the witness's has not yet.
    west.on_report(report("witness", 1, &[], 900), at + 20);
    assert!(
        west.acting(at + 30).is_empty(),
        "one promise is not a majority"
    );
    west.on_answer("witness", at + 100, ANSWER, at + 100);
    west.on_report(report("witness", 1, &[], LEASE + MARGIN), at + 120);
    assert_eq!(west.acting(at + 130), vec!["db".to_string()]);
    // Well before the hold (lease + margin from the promotion).
    assert!(at + 130 < at + LEASE + MARGIN);
}

#[test]
fn a_promise_counts_only_in_a_report_made_after_the_move() {
    let at = 5_000;
    let mut west = west_promoted(at);
    west.on_report(report("witness", 0, &[], 10_000), at + 20);
    assert!(
        west.acting(at + 30).is_empty(),
        "a voter without the move in its log may still grant east"
    );
}

#[test]
fn a_new_primary_acts_at_once_when_the_old_one_let_go() {
    let at = 5_000;
    let mut west = west_promoted(at);
    west.on_report(report("east", 1, &[], 0), at + 20);
    assert_eq!(west.acting(at + 30), vec!["db".to_string()]);
    // East still acting (it has not applied the move): no.
    let mut west = west_promoted(at);
    west.on_report(report("east", 0, &["db"], 0), at + 20);
    assert!(west.acting(at + 30).is_empty());
    // East applied it but still says it acts (a report from before its fence): no.
    let mut west = west_promoted(at);
    west.on_report(report("east", 1, &["db"], 0), at + 20);
    assert!(west.acting(at + 30).is_empty());
}

#[test]
fn an_old_primary_reports_acting_while_its_state_still_takes_writes() {
    let at = 5_000;
    let mut east = Node::new(cfg("east"), initial(), 0);
    let (state, decisions) = moved();
    east.applied(&state, &decisions, at);
    assert!(
        east.acting(at + 10).is_empty(),
        "the move took db from east"
    );
    // Its database server is still writable: its reports say so, and west waits.
    east.set_holding(["db".to_string()].into_iter().collect());
    let r = east.report(at + 10);
    assert_eq!(r.acting, vec!["db".to_string()]);
    let mut west = west_promoted(at);
    west.on_report(r, at + 20);
    assert!(west.acting(at + 30).is_empty());
    // Stopped: it lets go, and west acts at once.
    east.set_holding(BTreeSet::new());
    west.on_report(east.report(at + 40), at + 50);
    assert_eq!(west.acting(at + 60), vec!["db".to_string()]);
}

#[test]
fn a_database_acts_only_while_enough_of_the_lease_is_ahead() {
    let at = 5_000;
    let mut west = west_promoted(at);
    west.on_report(report("east", 1, &[], 0), at + 20);
    let until = west.lease_expires().expect("a lease");
    assert_eq!(west.acting_ahead(at + 30, 250), vec!["db".to_string()]);
    assert!(
        west.acting_ahead(until - 200, 250).is_empty(),
        "under a quarter left"
    );
    assert_eq!(
        west.acting(until - 200),
        vec!["db".to_string()],
        "the service still acts"
    );
}

#[test]
fn the_hold_bounds_the_wait_and_the_lease_bounds_it_all() {
    let at = 5_000;
    let mut west = west_promoted(at);
    assert!(west.acting(at + LEASE + MARGIN - 1).is_empty() || !west.holds_lease(at + LEASE));
    west.on_answer("witness", at + LEASE, ANSWER, at + LEASE);
    assert_eq!(
        west.acting(at + LEASE + MARGIN),
        vec!["db".to_string()],
        "the hold passed"
    );
    assert!(
        west.acting(at + 3 * LEASE).is_empty(),
        "no lease, no acting, whatever else holds"
    );
}

/// Regression (moved from the policy): a new primary read before its promotion time was
/// recorded acted at once. A node dates what it found on disk from its own start.
#[test]
fn a_restarted_node_dates_its_state_from_its_start() {
    let (state, _) = moved();
    let mut west = Node::new(cfg("west"), state, 10_000);
    west.on_answer("witness", 10_000, ANSWER, 10_000);
    assert!(
        west.acting(10_100).is_empty(),
        "neither hold nor promises yet"
    );
}

#[test]
fn a_grant_is_given_only_with_a_log_not_ahead_of_the_asker() {
    let mut witness = Node::new(cfg("witness"), initial(), 0);
    witness.on_report(report("east", 0, &["db"], 0), 100);
    assert_eq!(witness.report(150).grant_age_ms["east"], 50);
    // The move is in the witness's log: east (applied 0) gets no more grants.
    witness.set_log_epoch(1, 200);
    let answer = witness.on_report(report("east", 0, &["db"], 0), 400);
    assert_eq!(answer.log_epoch, 1);
    assert_eq!(witness.report(500).grant_age_ms["east"], 400);
    // A restarted voter counts its start as its last grant.
    let fresh = Node::new(cfg("witness"), initial(), 7_000);
    assert_eq!(fresh.report(7_300).grant_age_ms["east"], 300);
}

#[test]
fn a_site_that_hears_a_peer_hearing_the_leader_holds_its_elections() {
    let mut west = Node::new(cfg("west"), initial(), 0);
    assert_eq!(west.tick(100).elections_changed, None, "allowed at start");
    let mut r = report("witness", 0, &[], 0);
    r.leader = Some("east".into());
    west.on_report(r, 150);
    assert_eq!(west.tick(200).elections_changed, Some(false));
    // Two probes later without that word: allowed again.
    assert_eq!(west.tick(400).elections_changed, Some(true));
}

#[test]
fn the_site_cut_from_here_is_one_another_site_still_reaches() {
    let mut west = Node::new(cfg("west"), initial(), 0);
    for t in 1..=3 {
        west.on_miss("east", t * 100);
        west.on_answer("witness", t * 100, ANSWER, t * 100);
    }
    assert!(
        west.cut_from_here(400).is_empty(),
        "nobody says east is reachable"
    );
    let mut r = report("witness", 0, &[], 0);
    r.peers.insert(
        "east".into(),
        PeerView {
            reachable: Health::Up,
            for_ms: 1000,
            last_heard_ms: Some(10),
        },
    );
    r.peers.insert(
        "west".into(),
        PeerView {
            reachable: Health::Up,
            for_ms: 1000,
            last_heard_ms: Some(10),
        },
    );
    west.on_report(r, 400);
    assert_eq!(
        west.cut_from_here(450).into_iter().collect::<Vec<_>>(),
        vec!["east".to_string()]
    );
    let views = west.site_views(450);
    let east = views.iter().find(|v| v.name == "east").expect("east");
    assert_eq!(east.cannot_reach, vec!["west".to_string()]);
}

#[test]
fn a_failover_records_each_phase_once_where_it_was_seen() {
    let at = 5_000;
    let mut west = Node::new(cfg("west"), initial(), 0);
    for t in 1..=3 {
        west.on_miss("east", at - 400 + t * 100);
    }
    west.on_answer("witness", at - 50, ANSWER, at - 50);
    west.on_report(report("witness", 0, &[], 0), at - 40);
    west.tick(at - 30);
    let (state, decisions) = moved();
    west.applied(&state, &decisions, at);
    west.on_answer("witness", at + 10, ANSWER, at + 10);
    west.on_report(report("east", 1, &[], 0), at + 20);
    let tick = west.tick(at + 30);
    let names: Vec<&str> = tick.phases.iter().map(|(_, p, _)| *p).collect();
    assert_eq!(names, ["old-lease-over", "acting"], "{tick:?}");
    west.published("dns-published", None, 1, at + 40);
    west.published("gateway-switched", Some("db"), 1, at + 41);
    west.published("gateway-switched", Some("db"), 1, at + 90);
    let f = west.failovers().next().expect("the move is logged").clone();
    assert_eq!(
        (f.epoch, f.from.as_deref(), f.to.as_str()),
        (1, Some("east"), "west")
    );
    let got: Vec<(&str, u64)> = f.phases.iter().map(|(p, t)| (*p, *t)).collect();
    assert_eq!(
        got,
        [
            ("declared", at),
            ("old-lease-over", at + 30),
            ("acting", at + 30),
            ("dns-published", at + 40),
            ("gateway-switched", at + 41),
        ],
        "east was never heard here, so no last-heard; each phase once"
    );
    // A node that learns of the move while catching up (restarted, hearing nobody) does
    // not time its catching up as the failover.
    let mut east = Node::new(cfg("east"), initial(), 20_000);
    east.applied(&state, &decisions, 20_010);
    assert!(east.failovers().next().is_none());
    // Nor one the cluster counted down when the move was committed, hearing all by now.
    let mut east = Node::new(cfg("east"), initial(), 20_000);
    east.on_report(report("witness", 0, &[], 0), 20_050);
    east.tick(20_060);
    assert!(east.hears_majority(20_070));
    let mut down = state.clone();
    down.sites.insert("east".into(), SiteState::Down);
    east.applied(&down, &decisions, 20_070);
    assert!(east.failovers().next().is_none());
}

/// East holds the move that demotes it in its log but has not applied it (it helped commit
/// it, then lost the leader before learning so). The witness never got the entry and keeps
/// answering east's heartbeats as current. East's own vote must age from the last moment
/// its log was current: its lease ends a lease after that, whatever the witness says.
#[test]
fn a_site_whose_log_holds_an_unapplied_entry_counts_itself_only_as_of_before_it() {
    let mut east = Node::new(cfg("east"), initial(), 0);
    let answer = Answer {
        log_epoch: 0,
        applied_epoch: 0,
    };
    east.on_answer("witness", 100, answer, 105);
    east.set_log_epoch(0, 400);
    assert!(east.holds_lease(500), "current log, the witness's answer");
    // The demoting entry arrives (appended after the read at 400).
    east.set_log_epoch(1, 450);
    for t in (500..3000).step_by(100) {
        east.on_answer("witness", t, answer, t + 5);
        east.set_log_epoch(1, t + 5);
    }
    assert!(east.holds_lease(400 + LEASE - 1));
    assert!(
        !east.holds_lease(400 + LEASE),
        "its own vote ends a lease after it last saw its log current"
    );
    assert_eq!(east.lease_expires(), Some(400 + LEASE));
    // Applying the entry makes its log current again: its own vote counts anew.
    let (moved_state, decisions) = moved();
    east.applied(&moved_state, &decisions, 3100);
    assert!(east.holds_lease(3100));
    assert!(
        east.acting(3100).is_empty(),
        "and it knows it is no longer primary"
    );
}
