use std::collections::BTreeMap;

use outlast_core::config::{Failback, Mode};
use outlast_core::Health;

use super::*;

fn params(failback: Failback) -> Params {
    let sites: Vec<String> = ["east", "west", "witness"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    Params {
        sites,
        quorum: 2,
        grace_ms: 500,
        detection_ms: 800,
        lease_ms: 1000,
        margin_ms: 300,
        failback_after_ms: 2000,
        report_ttl_ms: 1000,
        services: vec![
            ServiceParams {
                name: "db".into(),
                mode: Mode::PrimaryStandby,
                preferred: Some("east".into()),
                failback,
                sites: vec!["east".into(), "west".into()],
                max_lag_bytes: None,
            },
            ServiceParams {
                name: "web".into(),
                mode: Mode::ActiveActive,
                preferred: None,
                failback,
                sites: vec!["east".into(), "west".into()],
                max_lag_bytes: None,
            },
        ],
    }
}

fn state() -> ClusterState {
    let sites = ["east", "west", "witness"]
        .iter()
        .map(|s| (s.to_string(), SiteState::Up))
        .collect();
    let mut services = BTreeMap::new();
    services.insert(
        "db".into(),
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
    services.insert(
        "web".into(),
        ServiceState {
            mode: Mode::ActiveActive,
            primary: None,
            active_sites: vec!["east".into(), "west".into()],
            epoch: 0,
            hold_ms: 0,
            from: None,
            reason: None,
            sync_set: None,
        },
    );
    ClusterState {
        epoch: 0,
        sites,
        services,
        maintenance: Default::default(),
        history: Default::default(),
        deps: Default::default(),
    }
}

/// A report from `site` received at `at`, seeing `down` peers unreachable for `down_for` ms.
fn report(site: &str, at: u64, down: &[&str], down_for: u64, services_up: bool) -> Received {
    let mut peers = BTreeMap::new();
    for p in ["east", "west", "witness"] {
        if p == site {
            continue;
        }
        let view = if down.contains(&p) {
            PeerView {
                reachable: Health::Down,
                for_ms: down_for,
                last_heard_ms: Some(down_for + 300),
            }
        } else {
            PeerView {
                reachable: Health::Up,
                for_ms: 10_000,
                last_heard_ms: Some(50),
            }
        };
        peers.insert(p.to_string(), view);
    }
    let mut services = BTreeMap::new();
    if site != "witness" {
        let healthy = if services_up {
            Health::Up
        } else {
            Health::Down
        };
        for s in ["db", "web"] {
            services.insert(
                s.to_string(),
                ServiceView {
                    healthy,
                    for_ms: 10_000,
                },
            );
        }
    }
    Received {
        at_ms: at,
        report: Report {
            site: site.into(),
            applied_epoch: 0,
            fenced: false,
            peers,
            services,
            acting: vec![],
            leader: None,
            grant_age_ms: BTreeMap::new(),
            db_primary: vec![],
            handed_over: Default::default(),
            db_sync: Default::default(),
            db_lsn: Default::default(),
            db_role: Default::default(),
            db_replay_age_ms: Default::default(),
            deps: Default::default(),
            rtt_us: Default::default(),
        },
    }
}

fn obs(reports: Vec<Received>) -> Observations {
    Observations {
        reports: reports
            .into_iter()
            .map(|r| (r.report.site.clone(), r))
            .collect(),
        ..Default::default()
    }
}

#[test]
fn all_healthy_decides_nothing() {
    let p = params(Failback::Auto);
    let o = obs(vec![
        report("east", 10_000, &[], 0, true),
        report("west", 10_000, &[], 0, true),
        report("witness", 10_000, &[], 0, true),
    ]);
    assert_eq!(decide(&p, &state(), &o, 10_050), vec![]);
}

#[test]
fn majority_past_grace_declares_site_down_and_moves_primary() {
    let p = params(Failback::Auto);
    let o = obs(vec![
        report("west", 10_000, &["east"], 600, true),
        report("witness", 10_000, &["east"], 600, true),
    ]);
    let d = decide(&p, &state(), &o, 10_000);
    assert!(
        d.contains(&Decision::SiteDown {
            site: "east".into()
        }),
        "{d:?}"
    );
    assert!(d.contains(&Decision::PrimaryMove {
        service: "db".into(),
        from: Some("east".into()),
        to: "west".into(),
        reason: MoveReason::Failover,
        hold_ms: 1300,
    }));
    assert!(d.contains(&Decision::Active {
        service: "web".into(),
        sites: vec!["west".into()]
    }));
}

#[test]
fn blip_shorter_than_grace_moves_nothing() {
    let p = params(Failback::Auto);
    let o = obs(vec![
        report("west", 10_000, &["east"], 400, true),
        report("witness", 10_000, &["east"], 400, true),
    ]);
    assert_eq!(decide(&p, &state(), &o, 10_050), vec![]);
}

#[test]
fn one_reporter_is_not_a_majority() {
    let p = params(Failback::Auto);
    let o = obs(vec![
        report("west", 10_000, &["east"], 5_000, true),
        report("witness", 10_000, &[], 0, true),
        report("east", 10_000, &[], 0, true),
    ]);
    assert_eq!(decide(&p, &state(), &o, 10_000), vec![]);
}

#[test]
fn stale_reports_are_not_evidence() {
    let p = params(Failback::Auto);
    let o = obs(vec![
        report("west", 1_000, &["east"], 5_000, true),
        report("witness", 1_000, &["east"], 5_000, true),
    ]);
    assert_eq!(decide(&p, &state(), &o, 10_000), vec![]);
}

#[test]
fn no_second_move_while_one_is_in_flight() {
    let p = params(Failback::Auto);
    let mut o = obs(vec![
        report("west", 10_000, &["east"], 600, true),
        report("witness", 10_000, &["east"], 600, true),
    ]);
    o.settles_at_ms.insert("db".into(), 11_000);
    let d = decide(&p, &state(), &o, 10_000);
    assert!(
        !d.iter().any(|d| matches!(d, Decision::PrimaryMove { .. })),
        "{d:?}"
    );
}

#[test]
fn failback_waits_for_stable_health_and_only_when_auto() {
    let mut s = state();
    let db = s.services.get_mut("db").expect("db");
    db.primary = Some("west".into());
    db.active_sites = vec!["west".into()];
    let mut east = report("east", 10_000, &[], 0, true);
    east.report.services.get_mut("db").expect("db").for_ms = 1_000;
    let mut o = obs(vec![
        east,
        report("west", 10_000, &[], 0, true),
        report("witness", 10_000, &[], 0, true),
    ]);
    let p = params(Failback::Auto);
    assert_eq!(
        decide(&p, &s, &o, 10_000),
        vec![],
        "healthy for 1s < failback_after 2s"
    );
    o.reports
        .get_mut("east")
        .expect("east")
        .report
        .services
        .get_mut("db")
        .expect("db")
        .for_ms = 2_500;
    let d = decide(&p, &s, &o, 10_000);
    assert_eq!(d.len(), 1);
    assert!(
        matches!(&d[0], Decision::PrimaryMove { to, reason: MoveReason::Failback, .. } if to == "east")
    );
    assert_eq!(
        decide(&params(Failback::Manual), &s, &o, 10_000),
        vec![],
        "manual never fails back"
    );
}

#[test]
fn unhealthy_backends_move_the_primary_after_grace() {
    let p = params(Failback::Auto);
    let mut east = report("east", 10_000, &[], 0, false);
    east.report.services.get_mut("db").expect("db").for_ms = 200;
    let o = obs(vec![
        east,
        report("west", 10_000, &[], 0, true),
        report("witness", 10_000, &[], 0, true),
    ]);
    let d = decide(&p, &state(), &o, 10_000);
    assert!(
        !d.iter().any(|d| matches!(d, Decision::PrimaryMove { .. })),
        "under grace: {d:?}"
    );
    let d = decide(&p, &state(), &o, 10_400);
    assert!(
        d.iter()
            .any(|d| matches!(d, Decision::PrimaryMove { to, .. } if to == "west")),
        "{d:?}"
    );
}

#[test]
fn a_down_site_comes_back_only_caught_up_and_unfenced() {
    let p = params(Failback::Auto);
    let mut s = state();
    s.epoch = 3;
    s.sites.insert("east".into(), SiteState::Down);
    let mut east = report("east", 10_000, &[], 0, true);
    east.report.applied_epoch = 2;
    let mut o = obs(vec![
        east,
        report("west", 10_000, &[], 0, true),
        report("witness", 10_000, &[], 0, true),
    ]);
    for r in o.reports.values_mut() {
        r.report.applied_epoch = r.report.applied_epoch.max(2);
    }
    assert!(!decide(&p, &s, &o, 10_000).contains(&Decision::SiteUp {
        site: "east".into()
    }));
    o.reports
        .get_mut("east")
        .expect("east")
        .report
        .applied_epoch = 3;
    o.reports.get_mut("east").expect("east").report.fenced = true;
    assert!(!decide(&p, &s, &o, 10_000).contains(&Decision::SiteUp {
        site: "east".into()
    }));
    o.reports.get_mut("east").expect("east").report.fenced = false;
    assert!(decide(&p, &s, &o, 10_000).contains(&Decision::SiteUp {
        site: "east".into()
    }));
}

#[test]
fn stale_proposal_changes_nothing() {
    let mut s = state();
    let p = Proposal {
        at_ms: 0,
        silent_ms: Default::default(),
        base_epoch: 5,
        decisions: vec![Decision::SiteDown {
            site: "east".into(),
        }],
    };
    assert_eq!(s.apply(&p), None);
    assert_eq!(s, state());
    let p = Proposal {
        at_ms: 0,
        silent_ms: Default::default(),
        base_epoch: 0,
        decisions: vec![Decision::SiteDown {
            site: "east".into(),
        }],
    };
    assert!(s.apply(&p).is_some());
    assert_eq!(s.epoch, 1);
    assert_eq!(s.sites["east"], SiteState::Down);
}

fn healthy() -> Observations {
    obs(vec![
        report("east", 10_000, &[], 0, true),
        report("west", 10_000, &[], 0, true),
        report("witness", 10_000, &[], 0, true),
    ])
}

#[test]
fn a_switchover_is_checked_then_moves_planned() {
    let p = params(Failback::Auto);
    let o = healthy();
    let s = state();
    assert_eq!(
        switchover(&p, &s, &o, "db", "west", 10_000),
        Ok(Decision::PrimaryMove {
            service: "db".into(),
            from: Some("east".into()),
            to: "west".into(),
            reason: MoveReason::Switchover,
            hold_ms: 1300,
        })
    );
    let refused = |service: &str, to: &str, s: &ClusterState, o: &Observations| {
        switchover(&p, s, o, service, to, 10_000).expect_err("refused")
    };
    assert!(matches!(
        refused("nope", "west", &s, &o),
        Refusal::Unknown(_)
    ));
    assert!(matches!(refused("db", "mars", &s, &o), Refusal::Unknown(_)));
    for (service, to) in [("web", "west"), ("db", "witness"), ("db", "east")] {
        assert!(matches!(refused(service, to, &s, &o), Refusal::Conflict(_)));
    }
    // Unhealthy there, or in maintenance, or no fresh word: not now.
    let sick = obs(vec![
        report("east", 10_000, &[], 0, true),
        report("west", 10_000, &[], 0, false),
    ]);
    assert!(matches!(
        refused("db", "west", &s, &sick),
        Refusal::Conflict(_)
    ));
    let mut m = state();
    m.maintenance.insert("west".into());
    assert!(matches!(
        refused("db", "west", &m, &o),
        Refusal::Conflict(_)
    ));
    assert!(matches!(
        refused("db", "west", &s, &Observations::default()),
        Refusal::Conflict(_)
    ));
}

#[test]
fn an_operators_switchover_is_not_failed_back_but_a_maintenance_move_is() {
    let p = params(Failback::Auto);
    let o = healthy();
    let mut s = state();
    if let Some(db) = s.services.get_mut("db") {
        db.primary = Some("west".into());
        db.from = Some("east".into());
        db.reason = Some(MoveReason::Switchover);
    }
    assert_eq!(decide(&p, &s, &o, 10_050), vec![], "stays where it was put");
    if let Some(db) = s.services.get_mut("db") {
        db.reason = Some(MoveReason::Maintenance);
    }
    let d = decide(&p, &s, &o, 10_050);
    assert!(
        d.iter().any(|d| matches!(d, Decision::PrimaryMove { to, reason: MoveReason::Failback, .. } if to == "east")),
        "{d:?}"
    );
}

#[test]
fn maintenance_moves_the_primary_away_and_drains_active_active() {
    let p = params(Failback::Auto);
    let o = healthy();
    let s = state();
    assert_eq!(
        maintenance(&p, &s, &o, "east", true, 10_000),
        Ok(Decision::Maintenance {
            site: "east".into(),
            on: true
        })
    );
    let mut m = s.clone();
    m.maintenance.insert("east".into());
    let d = decide(&p, &m, &o, 10_000);
    assert!(d.contains(&Decision::PrimaryMove {
        service: "db".into(),
        from: Some("east".into()),
        to: "west".into(),
        reason: MoveReason::Maintenance,
        hold_ms: 1300,
    }));
    assert!(d.contains(&Decision::Active {
        service: "web".into(),
        sites: vec!["west".into()],
    }));
    // Already in; out again; unknown site.
    assert!(matches!(
        maintenance(&p, &m, &o, "east", true, 10_000),
        Err(Refusal::Conflict(_))
    ));
    assert!(maintenance(&p, &m, &o, "east", false, 10_000).is_ok());
    assert!(matches!(
        maintenance(&p, &s, &o, "mars", true, 10_000),
        Err(Refusal::Unknown(_))
    ));
    // Nowhere healthy to go: refused.
    let sick = obs(vec![
        report("east", 10_000, &[], 0, true),
        report("west", 10_000, &[], 0, false),
    ]);
    assert!(matches!(
        maintenance(&p, &s, &sick, "east", true, 10_000),
        Err(Refusal::Conflict(_))
    ));
}

/// `params` with a third data site, north, that also runs `db`.
fn params_with_north() -> Params {
    let mut p = params(Failback::Manual);
    p.sites.insert(2, "north".into());
    p.services[0].sites.push("north".into());
    p
}

fn with_lsn(mut r: Received, lsn: u64) -> Received {
    r.report.db_lsn.insert("db".into(), lsn);
    r
}

#[test]
fn a_failover_promotes_the_most_advanced_recorded_standby_and_waits_without_one() {
    let p = params_with_north();
    let mut st = state();
    st.sites.insert("north".into(), SiteState::Up);
    let moved_to = |st: &ClusterState, west_up: bool, west: u64, north: u64| {
        let o = obs(vec![
            with_lsn(report("west", 10_000, &["east"], 900, west_up), west),
            with_lsn(report("north", 10_000, &["east"], 900, true), north),
            report("witness", 10_000, &["east"], 900, true),
        ]);
        decide(&p, st, &o, 10_000)
            .into_iter()
            .find_map(|d| match d {
                Decision::PrimaryMove { service, to, .. } if service == "db" => Some(to),
                _ => None,
            })
    };
    // Nothing recorded (async, or never asked): the most advanced server.
    assert_eq!(moved_to(&st, true, 100, 200).as_deref(), Some("north"));
    assert_eq!(moved_to(&st, true, 300, 200).as_deref(), Some("west"));
    // Both recorded: still the most advanced of them.
    st.services.get_mut("db").expect("db").sync_set = Some(vec!["north".into(), "west".into()]);
    assert_eq!(moved_to(&st, true, 100, 200).as_deref(), Some("north"));
    // Only west recorded: north may lack acknowledged commits, however far it got.
    st.services.get_mut("db").expect("db").sync_set = Some(vec!["west".into()]);
    assert_eq!(moved_to(&st, true, 100, 200).as_deref(), Some("west"));
    assert_eq!(
        moved_to(&st, false, 100, 200),
        None,
        "no recorded standby up: wait"
    );
    // Recorded to go on alone (degrade): any server, the most advanced.
    st.services.get_mut("db").expect("db").sync_set = Some(vec![]);
    assert_eq!(moved_to(&st, true, 100, 200).as_deref(), Some("north"));
}

#[test]
fn the_primary_asks_for_its_sync_set_and_the_cluster_records_it_before_it_is_used() {
    let p = params(Failback::Manual);
    let mut st = state();
    let asking = |site: &str, primary: bool, set: &[&str]| {
        let mut r = report(site, 10_000, &[], 0, true);
        if primary {
            r.report.db_primary.push("db".into());
        }
        r.report
            .db_sync
            .insert("db".into(), set.iter().map(|s| s.to_string()).collect());
        r
    };
    let o = obs(vec![
        asking("east", true, &["west"]),
        report("west", 10_000, &[], 0, true),
    ]);
    let d = decide(&p, &st, &o, 10_000);
    assert_eq!(
        d,
        vec![Decision::SyncSet {
            service: "db".into(),
            sites: vec!["west".into()]
        }]
    );
    st.apply(&Proposal {
        at_ms: 0,
        silent_ms: Default::default(),
        base_epoch: st.epoch,
        decisions: d,
    });
    assert_eq!(st.services["db"].sync_set, Some(vec!["west".into()]));
    assert_eq!(
        decide(&p, &st, &o, 10_000),
        vec![],
        "recorded: nothing more"
    );
    // A server that is not the committed primary's, or not writable, asks in vain.
    let o = obs(vec![asking("east", false, &[]), asking("west", true, &[])]);
    assert_eq!(decide(&p, &st, &o, 10_000), vec![]);
    // The new primary was a synchronous standby: it leaves the set when it moves.
    st.apply(&Proposal {
        at_ms: 0,
        silent_ms: Default::default(),
        base_epoch: st.epoch,
        decisions: vec![Decision::PrimaryMove {
            service: "db".into(),
            from: Some("east".into()),
            to: "west".into(),
            reason: MoveReason::Failover,
            hold_ms: 1300,
        }],
    });
    assert_eq!(st.services["db"].sync_set, Some(vec![]));
}

#[test]
fn an_async_standby_further_behind_than_max_lag_is_not_promoted_by_a_failover() {
    let mut p = params(Failback::Manual);
    p.services[0].max_lag_bytes = Some(1000);
    let moved = |east_last: Option<u64>, west: u64| {
        let mut east = report("east", 9_000, &[], 0, true);
        if let Some(at) = east_last {
            east.report.db_lsn.insert("db".into(), at);
        }
        let o = obs(vec![
            east,
            with_lsn(report("west", 10_000, &["east"], 900, true), west),
            report("witness", 10_000, &["east"], 900, true),
        ]);
        let (decisions, held) = decide_and_hold(&p, &state(), &o, 10_000);
        let moved = decisions
            .iter()
            .any(|d| matches!(d, Decision::PrimaryMove { to, .. } if to == "west"));
        // Held back exactly when not moved (and said so, for the alert).
        assert_eq!(!moved && east_last.is_some(), !held.is_empty(), "{held:?}");
        moved
    };
    // East's last report (stale now, but the last word on where it was) against west's.
    assert!(moved(Some(5_000), 4_500), "500 bytes behind: promoted");
    assert!(
        moved(Some(5_000), 4_000),
        "exactly max_lag behind: promoted"
    );
    assert!(!moved(Some(5_000), 3_999), "further behind: waits");
    let east = report("east", 9_000, &[], 0, true);
    let mut east = east;
    east.report.db_lsn.insert("db".into(), 5_000);
    let o = obs(vec![
        east,
        with_lsn(report("west", 10_000, &["east"], 900, true), 3_000),
        report("witness", 10_000, &["east"], 900, true),
    ]);
    assert_eq!(
        decide_and_hold(&p, &state(), &o, 10_000).1,
        vec![Held {
            service: "db".into(),
            best: "west".into(),
            behind_bytes: Some(2_000),
            max_lag_bytes: 1000,
        }]
    );
    assert!(
        moved(None, 0),
        "the old primary's position unknown: nobody held back"
    );
}

/// The incident history from committed entries: a site loss, its failover, its return and
/// the failback make one incident that ends resolved; the outage runs from the silence to
/// the move; an operator's note lands on the incident; a replay of the same entries on
/// another state gives the same history.
#[test]
fn committed_entries_write_one_incident_per_site_loss() {
    use outlast_core::incident::{Impact, Step};
    let entries = vec![
        Proposal {
            base_epoch: 0,
            at_ms: 1_000_000,
            silent_ms: [("east".to_string(), 1500)].into_iter().collect(),
            decisions: vec![
                Decision::SiteDown {
                    site: "east".into(),
                },
                Decision::PrimaryMove {
                    service: "db".into(),
                    from: Some("east".into()),
                    to: "west".into(),
                    reason: MoveReason::Failover,
                    hold_ms: 1000,
                },
            ],
        },
        Proposal {
            base_epoch: 1,
            at_ms: 1_010_000,
            silent_ms: Default::default(),
            decisions: vec![Decision::IncidentNote {
                id: Some(1),
                title: None,
                status: Step::Identified,
                impact: Some(Impact::Critical),
                body: "power cut at east".into(),
                by: Some("ops".into()),
                components: vec![],
            }],
        },
        Proposal {
            base_epoch: 2,
            at_ms: 1_060_000,
            silent_ms: Default::default(),
            decisions: vec![Decision::SiteUp {
                site: "east".into(),
            }],
        },
        Proposal {
            base_epoch: 3,
            at_ms: 1_090_000,
            silent_ms: Default::default(),
            decisions: vec![Decision::PrimaryMove {
                service: "db".into(),
                from: Some("west".into()),
                to: "east".into(),
                reason: MoveReason::Failback,
                hold_ms: 1000,
            }],
        },
    ];
    let mut st = state();
    let mut statuses = Vec::new();
    for p in &entries {
        assert!(st.apply(p).is_some());
        statuses.push(st.history.incidents.last().map(|i| i.status));
    }
    assert_eq!(
        statuses,
        vec![
            Some(Step::Identified),
            Some(Step::Identified),
            Some(Step::Monitoring),
            Some(Step::Resolved)
        ]
    );
    let h = &st.history;
    assert_eq!(h.incidents.len(), 1, "{h:#?}");
    let i = &h.incidents[0];
    assert_eq!(i.title, "Site east is down");
    assert_eq!(i.impact, Impact::Critical);
    assert_eq!(i.resolved_ms, Some(1_090_000));
    assert!(i.moved.is_empty());
    assert_eq!(i.updates.len(), 5, "{:#?}", i.updates);
    assert_eq!(i.updates[2].by.as_deref(), Some("ops"));
    assert!(i.components.contains("service-db") && i.components.contains("site-east"));
    // db was out from east's silence to the move, east from its silence to its return;
    // web, active at west too, partially out while east was down.
    let out = |c: &str| -> Vec<(u64, Option<u64>, String)> {
        h.outages
            .iter()
            .filter(|o| o.component == c)
            .map(|o| (o.start_ms, o.end_ms, o.state.clone()))
            .collect()
    };
    assert_eq!(
        out("service-db"),
        vec![(998_500, Some(1_000_000), "major_outage".into())]
    );
    assert_eq!(
        out("site-east"),
        vec![(998_500, Some(1_060_000), "major_outage".into())]
    );
    assert_eq!(
        out("service-web"),
        vec![(998_500, Some(1_060_000), "partial_outage".into())]
    );
    assert_eq!(h.since_ms, Some(998_500));
    // The same entries on another copy: the same history.
    let mut again = state();
    for p in &entries {
        again.apply(p);
    }
    assert_eq!(again.history, st.history);
    // A stale entry changes nothing, history included.
    let before = st.history.clone();
    assert!(st.apply(&entries[0]).is_none());
    assert_eq!(st.history, before);
}

/// A planned switchover outside any incident is recorded resolved at once, of impact none;
/// maintenance opens an incident that its end resolves.
#[test]
fn planned_moves_and_maintenance_are_recorded() {
    use outlast_core::incident::{Impact, Step};
    let mut st = state();
    let mut at = 5_000_000;
    let mut commit = |st: &mut ClusterState, d: Decision| {
        at += 1000;
        let p = Proposal {
            base_epoch: st.epoch,
            at_ms: at,
            silent_ms: Default::default(),
            decisions: vec![d],
        };
        st.apply(&p);
    };
    commit(
        &mut st,
        Decision::PrimaryMove {
            service: "db".into(),
            from: Some("east".into()),
            to: "west".into(),
            reason: MoveReason::Switchover,
            hold_ms: 0,
        },
    );
    commit(
        &mut st,
        Decision::Maintenance {
            site: "west".into(),
            on: true,
        },
    );
    commit(
        &mut st,
        Decision::Maintenance {
            site: "west".into(),
            on: false,
        },
    );
    let i = &st.history.incidents;
    assert_eq!(i.len(), 2, "{i:#?}");
    assert_eq!((i[0].status, i[0].impact), (Step::Resolved, Impact::None));
    assert_eq!(i[1].title, "Site west is in maintenance");
    assert_eq!(
        (i[1].status, i[1].impact),
        (Step::Resolved, Impact::Maintenance)
    );
    let maint: Vec<_> = st
        .history
        .outages
        .iter()
        .filter(|o| o.component == "site-west")
        .map(|o| (o.state.as_str(), o.start_ms, o.end_ms))
        .collect();
    assert_eq!(
        maint,
        vec![("under_maintenance", 5_002_000, Some(5_003_000))]
    );
}

/// A failover committed just before its site is declared down (the site's backends went
/// quiet first) joins the site's incident instead of standing alone.
#[test]
fn a_failover_just_before_the_verdict_joins_the_site_incident() {
    let mut st = state();
    let p = |base, at, d| Proposal {
        base_epoch: base,
        at_ms: at,
        silent_ms: Default::default(),
        decisions: vec![d],
    };
    st.apply(&p(
        0,
        2_000_000,
        Decision::PrimaryMove {
            service: "db".into(),
            from: Some("east".into()),
            to: "west".into(),
            reason: MoveReason::Failover,
            hold_ms: 0,
        },
    ));
    st.apply(&p(
        1,
        2_000_400,
        Decision::SiteDown {
            site: "east".into(),
        },
    ));
    st.apply(&p(
        2,
        2_030_000,
        Decision::SiteUp {
            site: "east".into(),
        },
    ));
    st.apply(&p(
        3,
        2_040_000,
        Decision::PrimaryMove {
            service: "db".into(),
            from: Some("west".into()),
            to: "east".into(),
            reason: MoveReason::Failback,
            hold_ms: 0,
        },
    ));
    let i = &st.history.incidents;
    assert_eq!(i.len(), 1, "{i:#?}");
    assert_eq!(i[0].title, "Site east is down");
    assert_eq!(i[0].started_ms, 2_000_000);
    assert!(i[0].components.contains("service-db"));
    assert_eq!(
        i[0].status,
        outlast_core::incident::Step::Resolved,
        "{i:#?}"
    );
}
