//! Analysis of a drill's recording, and the report: `report.json` and `index.html` with the
//! timeline drawn as SVG, the stopwatch table, each expectation's verdict and the trend of
//! earlier drills.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::scenario::{Expect, Scenario};

/// Width of a timeline bucket.
pub const BUCKET_MS: u64 = 250;
/// The RTO window: requests succeed again once a window this long is at 99%.
const WINDOW_MS: u64 = 1000;

#[derive(Debug, Clone, Copy)]
pub struct RequestOutcome {
    pub t_ms: u64,
    pub ok: bool,
    pub latency_ms: f64,
}

#[derive(Debug, Default)]
pub struct Recording {
    pub duration_ms: u64,
    pub requests: Vec<RequestOutcome>,
    /// Acknowledged write ids and when they were acknowledged.
    pub acked: Vec<(String, u64)>,
    pub writes_refused: u64,
    /// Times each id was found in the sinks (a key held by two sinks counts once).
    pub stored: BTreeMap<String, usize>,
    pub faults: Vec<FaultAt>,
    pub failback_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FaultAt {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Requests {
    pub sent: u64,
    pub ok: u64,
    pub failed: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Writes {
    pub acked: u64,
    pub lost: u64,
    pub duplicated: u64,
    /// Tries refused by a site (retried elsewhere with the same ids).
    #[serde(default)]
    pub refused: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Bucket {
    pub t_ms: u64,
    pub sent: u64,
    pub ok: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Verdict {
    pub metric: String,
    pub op: String,
    pub value: f64,
    pub actual: Option<f64>,
    pub pass: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    pub scenario: String,
    pub started: String,
    pub started_ms: u64,
    pub duration_ms: u64,
    pub faults: Vec<FaultAt>,
    pub rto_ms: Option<u64>,
    pub requests: Requests,
    pub writes: Writes,
    pub rpo_ms: u64,
    pub failback_ms: Option<u64>,
    pub timeline: Vec<Bucket>,
    pub expectations: Vec<Verdict>,
    pub passed: bool,
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// RTO: from the first fault to the start of the first 1 s window at 99% success that
/// follows the first failed request after the fault. No failure after it: zero.
pub fn rto(requests: &[RequestOutcome], fault_ms: u64, end_ms: u64) -> Option<u64> {
    let first_fail = requests
        .iter()
        .filter(|r| r.t_ms >= fault_ms && !r.ok)
        .map(|r| r.t_ms)
        .min()?;
    let mut t = first_fail;
    while t + WINDOW_MS <= end_ms {
        let (n, ok) = requests
            .iter()
            .filter(|r| r.t_ms >= t && r.t_ms < t + WINDOW_MS)
            .fold((0u64, 0u64), |(n, ok), r| (n + 1, ok + u64::from(r.ok)));
        if n > 0 && ok * 100 >= n * 99 {
            return Some(t - fault_ms);
        }
        t += 50;
    }
    // Never recovered within the drill: the whole rest of it.
    Some(end_ms.saturating_sub(fault_ms))
}

pub fn analyse(sc: &Scenario, rec: &Recording, started_ms: u64) -> Report {
    let ok = rec.requests.iter().filter(|r| r.ok).count() as u64;
    let requests = Requests {
        sent: rec.requests.len() as u64,
        ok,
        failed: rec.requests.len() as u64 - ok,
    };
    let rto_ms = match (sc.workload.service.is_some(), rec.faults.first()) {
        (true, Some(f)) => Some(rto(&rec.requests, f.at_ms, rec.duration_ms).unwrap_or(0)),
        (true, None) => Some(0),
        (false, _) => None,
    };
    let lost: Vec<u64> = rec
        .acked
        .iter()
        .filter(|(id, _)| !rec.stored.contains_key(id))
        .map(|(_, t)| *t)
        .collect();
    let rpo_ms = match (lost.iter().min(), lost.iter().max()) {
        (Some(a), Some(b)) => b - a + 1,
        _ => 0,
    };
    let writes = Writes {
        acked: rec.acked.len() as u64,
        lost: lost.len() as u64,
        duplicated: rec.stored.values().filter(|n| **n > 1).count() as u64,
        refused: rec.writes_refused,
    };
    let mut timeline = Vec::new();
    let mut t = 0;
    while t < rec.duration_ms {
        let mut lat: Vec<f64> = Vec::new();
        let mut sent = 0;
        let mut okb = 0;
        for r in rec
            .requests
            .iter()
            .filter(|r| r.t_ms >= t && r.t_ms < t + BUCKET_MS)
        {
            sent += 1;
            if r.ok {
                okb += 1;
                lat.push(r.latency_ms);
            }
        }
        lat.sort_by(f64::total_cmp);
        timeline.push(Bucket {
            t_ms: t,
            sent,
            ok: okb,
            p50_ms: pct(&lat, 0.5),
            p99_ms: pct(&lat, 0.99),
        });
        t += BUCKET_MS;
    }
    let actual = |e: &Expect| -> Option<f64> {
        Some(match e.metric.as_str() {
            "rto_ms" => rto_ms? as f64,
            "rpo_ms" => rpo_ms as f64,
            "failback_ms" => rec.failback_ms? as f64,
            "requests_failed" => requests.failed as f64,
            "writes_acked" => writes.acked as f64,
            "writes_lost" => writes.lost as f64,
            "writes_duplicated" => writes.duplicated as f64,
            _ => return None,
        })
    };
    let expectations: Vec<Verdict> = sc
        .expect
        .iter()
        .map(|e| {
            let a = actual(e);
            Verdict {
                metric: e.metric.clone(),
                op: serde_json::to_value(e.op)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_string))
                    .unwrap_or_default(),
                value: e.value,
                actual: a,
                pass: a.is_some_and(|a| e.holds(a)),
            }
        })
        .collect();
    Report {
        scenario: sc.name.clone(),
        started: outlast_relay::utc_timestamp(started_ms),
        started_ms,
        duration_ms: rec.duration_ms,
        faults: rec.faults.clone(),
        rto_ms,
        requests,
        writes,
        rpo_ms,
        failback_ms: rec.failback_ms,
        passed: expectations.iter().all(|v| v.pass),
        timeline,
        expectations,
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The timeline: success rate (green) and p99 latency (blue) over time, faults in red,
/// the RTO span shaded.
pub fn timeline_svg(r: &Report) -> String {
    let (w, h, left, right, top, bottom) = (960.0, 320.0, 56.0, 56.0, 24.0, 36.0);
    let pw = w - left - right;
    let ph = h - top - bottom;
    let dur = r.duration_ms.max(1) as f64;
    let x = |t: f64| left + pw * t / dur;
    let max_lat = r
        .timeline
        .iter()
        .map(|b| b.p99_ms)
        .fold(1.0f64, f64::max)
        .max(5.0);
    let mut s = String::new();
    let _ = write!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {w} {h}" width="{w}" height="{h}" font-family="sans-serif" font-size="12">"#
    );
    let _ = write!(
        s,
        r##"<rect x="0" y="0" width="{w}" height="{h}" fill="#fff"/>"##
    );
    if let (Some(rto), Some(f)) = (r.rto_ms, r.faults.first()) {
        let (a, b) = (x(f.at_ms as f64), x((f.at_ms + rto) as f64));
        let _ = write!(
            s,
            r##"<rect x="{a:.1}" y="{top}" width="{:.1}" height="{ph}" fill="#fde2e2"/><text x="{:.1}" y="{:.1}" fill="#b00">RTO {rto} ms</text>"##,
            (b - a).max(1.0),
            a + 4.0,
            top + ph - 6.0
        );
    }
    // Axes and grid.
    for i in 0..=4 {
        let y = top + ph * f64::from(i) / 4.0;
        let _ = write!(
            s,
            r##"<line x1="{left}" x2="{:.1}" y1="{y:.1}" y2="{y:.1}" stroke="#eee"/><text x="{:.1}" y="{:.1}" text-anchor="end" fill="#2a7">{}%</text><text x="{:.1}" y="{:.1}" fill="#36c">{:.0} ms</text>"##,
            left + pw,
            left - 6.0,
            y + 4.0,
            100 - i * 25,
            left + pw + 6.0,
            y + 4.0,
            max_lat * (1.0 - f64::from(i) / 4.0)
        );
    }
    let step = if dur > 60_000.0 { 10_000 } else { 5_000 };
    let mut t = 0;
    while (t as f64) <= dur {
        let _ = write!(
            s,
            r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" fill="#555">{}s</text>"##,
            x(t as f64),
            h - 12.0,
            t / 1000
        );
        t += step;
    }
    let line = |pts: Vec<(f64, f64)>, color: &str| -> String {
        let d: Vec<String> = pts.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
        format!(
            r#"<polyline fill="none" stroke="{color}" stroke-width="2" points="{}"/>"#,
            d.join(" ")
        )
    };
    let mid = |b: &Bucket| x(b.t_ms as f64 + BUCKET_MS as f64 / 2.0);
    let success: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter(|b| b.sent > 0)
        .map(|b| (mid(b), top + ph * (1.0 - b.ok as f64 / b.sent as f64)))
        .collect();
    let latency: Vec<(f64, f64)> = r
        .timeline
        .iter()
        .filter(|b| b.ok > 0)
        .map(|b| (mid(b), top + ph * (1.0 - b.p99_ms / max_lat)))
        .collect();
    s.push_str(&line(latency, "#36c"));
    s.push_str(&line(success, "#2a7"));
    for (i, f) in r.faults.iter().enumerate() {
        let fx = x(f.at_ms as f64);
        let _ = write!(
            s,
            r##"<line x1="{fx:.1}" x2="{fx:.1}" y1="{top}" y2="{:.1}" stroke="#d22" stroke-dasharray="4 3"/><text x="{:.1}" y="{:.1}" fill="#d22">{}</text>"##,
            top + ph,
            fx + 3.0,
            top + 12.0 + 14.0 * (i % 3) as f64,
            esc(&f.what)
        );
    }
    let _ = write!(
        s,
        r##"<text x="{left}" y="14" fill="#2a7">success rate</text><text x="{:.1}" y="14" fill="#36c">p99 latency</text></svg>"##,
        left + 110.0
    );
    s
}

fn fmt_ms(v: Option<u64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "—".into())
}

/// The page: headline verdict, timeline, stopwatch, expectations, trend.
pub fn html(r: &Report, history: &[Report]) -> String {
    let mut s = String::new();
    let verdict = if r.passed {
        ("PASSED", "#2a7")
    } else {
        ("FAILED", "#d22")
    };
    let _ = write!(
        s,
        r##"<!doctype html><html><head><meta charset="utf-8"><title>drill {name}</title>
<style>body{{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}}table{{border-collapse:collapse;margin:12px 0}}td,th{{padding:4px 12px;border-bottom:1px solid #ddd;text-align:left}}.big{{font-size:28px;font-weight:bold}}</style></head><body>
<h1>Drill “{name}” <span style="color:{c}">{v}</span></h1><p>started {started}, {dur:.1} s</p>"##,
        name = esc(&r.scenario),
        c = verdict.1,
        v = verdict.0,
        started = esc(&r.started),
        dur = r.duration_ms as f64 / 1000.0
    );
    s.push_str(&timeline_svg(r));
    let _ = write!(
        s,
        r#"<h2>Stopwatch</h2><table>
<tr><th>downtime (RTO)</th><td class="big">{rto}</td></tr>
<tr><th>requests</th><td>{sent} sent, {ok} ok, {failed} failed</td></tr>
<tr><th>writes</th><td>{acked} acknowledged, {lost} lost, {dup} duplicated ({refused} tries refused and retried elsewhere)</td></tr>
<tr><th>data lost (RPO)</th><td>{rpo} ms</td></tr>
<tr><th>failback</th><td>{fb}</td></tr></table>"#,
        rto = fmt_ms(r.rto_ms),
        sent = r.requests.sent,
        ok = r.requests.ok,
        failed = r.requests.failed,
        acked = r.writes.acked,
        lost = r.writes.lost,
        dup = r.writes.duplicated,
        refused = r.writes.refused,
        rpo = r.rpo_ms,
        fb = fmt_ms(r.failback_ms),
    );
    s.push_str("<h2>Faults</h2><table><tr><th>at</th><th>fault</th></tr>");
    for f in &r.faults {
        let _ = write!(
            s,
            "<tr><td>{:.2} s</td><td>{}</td></tr>",
            f.at_ms as f64 / 1000.0,
            esc(&f.what)
        );
    }
    s.push_str("</table><h2>Expectations</h2><table><tr><th>metric</th><th>expected</th><th>actual</th><th></th></tr>");
    for v in &r.expectations {
        let _ = write!(
            s,
            r#"<tr><td>{}</td><td>{} {}</td><td>{}</td><td style="color:{}">{}</td></tr>"#,
            esc(&v.metric),
            esc(&v.op),
            v.value,
            v.actual
                .map(|a| a.to_string())
                .unwrap_or_else(|| "—".into()),
            if v.pass { "#2a7" } else { "#d22" },
            if v.pass { "pass" } else { "FAIL" }
        );
    }
    s.push_str("</table>");
    if !history.is_empty() {
        s.push_str("<h2>Trend (this scenario, earlier drills)</h2><table><tr><th>started</th><th>RTO</th><th>failed requests</th><th>writes lost</th><th></th></tr>");
        let max = history
            .iter()
            .filter_map(|h| h.rto_ms)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        for h in history {
            let bar = h.rto_ms.map(|v| 200.0 * v as f64 / max).unwrap_or(0.0);
            let _ = write!(
                s,
                r##"<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><svg width="210" height="12"><rect width="{bar:.0}" height="12" fill="#36c"/></svg></td></tr>"##,
                esc(&h.started),
                fmt_ms(h.rto_ms),
                h.requests.failed,
                h.writes.lost
            );
        }
        s.push_str("</table>");
    }
    s.push_str("</body></html>\n");
    s
}

/// Earlier reports of the same scenario under `history_dir`, oldest first.
pub fn history(history_dir: &Path, scenario: &str) -> Vec<Report> {
    let mut out: Vec<Report> = std::fs::read_dir(history_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("report.json")).ok())
        .filter_map(|b| serde_json::from_slice::<Report>(&b).ok())
        .filter(|r| r.scenario == scenario)
        .collect();
    out.sort_by_key(|r| r.started_ms);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reqs(fail: std::ops::Range<u64>) -> Vec<RequestOutcome> {
        (0..200)
            .map(|i| {
                let t = i * 50;
                RequestOutcome {
                    t_ms: t,
                    ok: !fail.contains(&t),
                    latency_ms: 1.0,
                }
            })
            .collect()
    }

    #[test]
    fn rto_is_the_outage_not_zero_and_not_the_whole_drill() {
        // Fault at 2 s, failures from 2.3 s to 4.5 s, drill 10 s.
        let r = rto(&reqs(2300..4500), 2000, 10_000).expect("rto");
        assert_eq!(r, 2500, "recovery at 4.5 s is 2.5 s after the fault");
        assert_eq!(rto(&reqs(0..0), 2000, 10_000), None);
        // Never recovers: the rest of the drill.
        assert_eq!(rto(&reqs(3000..20_000), 2000, 10_000), Some(8000));
    }
}
