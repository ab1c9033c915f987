//! `outlast check`: every problem at once, each as `file:line:col: what; fix`, exit 64.

// A test stands outside the agents and times them by the machine's own clock.
#![allow(clippy::disallowed_methods)]

use std::path::PathBuf;
use std::process::Command;

const VALID: &str = r#"[cluster]
name = "shop"
secret = "0123456789abcdef"

[timing]
probe_interval = "100ms"
fall = 3
grace = "500ms"
lease = "1s"

[[sites]]
name = "east"
address = "127.0.0.11"
peer_port = 7400
api_port = 7401
[[sites]]
name = "west"
address = "127.0.0.12"
peer_port = 7400
api_port = 7401
[[sites]]
name = "witness"
address = "127.0.0.13"
peer_port = 7400
api_port = 7401
witness = true

[[services]]
name = "web"
mode = "primary-standby"
primary = "east"
port = 8080
[services.backends]
east = ["127.0.0.1:9001"]
west = ["127.0.0.1:9002"]

[[streams]]
name = "clicks"
[[streams.sinks]]
url = "file:///tmp/sink-east"
site = "east"
"#;

struct Checked {
    file: PathBuf,
    code: i32,
    stderr: String,
    stdout: String,
    _dir: tempfile::TempDir,
}

fn check(text: &str) -> Checked {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("outlast.toml");
    std::fs::write(&file, text).expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(["check", "--config"])
        .arg(&file)
        .output()
        .expect("run outlast check");
    Checked {
        file,
        code: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).to_string(),
        stdout: String::from_utf8_lossy(&out.stdout).to_string(),
        _dir: dir,
    }
}

/// 1-based line and column of the `nth` (0-based) occurrence of `needle`, found by a plain
/// scan independent of the implementation.
fn at(text: &str, needle: &str, nth: usize) -> (usize, usize) {
    let offset = text
        .match_indices(needle)
        .nth(nth)
        .map(|(i, _)| i)
        .expect("needle present");
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let col = offset - before.rfind('\n').map(|i| i + 1).unwrap_or(0) + 1;
    (line, col)
}

fn expect_line(c: &Checked, text: &str, needle: &str, nth: usize, message: &str) {
    let (line, col) = at(text, needle, nth);
    let want = format!("{}:{line}:{col}: {message}", c.file.display());
    assert!(
        c.stderr.lines().any(|l| l == want),
        "missing line\n  {want}\nin\n{}",
        c.stderr
    );
    assert_eq!(c.code, 64, "exit status");
}

#[test]
fn a_valid_config_passes() {
    let c = check(VALID);
    assert_eq!(c.code, 0, "{}", c.stderr);
    assert!(
        c.stdout
            .contains("ok: cluster shop, 3 sites (1 witness), quorum 2"),
        "{}",
        c.stdout
    );
}

#[test]
fn unknown_site_named_anywhere() {
    let text = VALID
        .replace("primary = \"east\"", "primary = \"north\"")
        .replace(
            "west = [\"127.0.0.1:9002\"]",
            "south = [\"127.0.0.1:9002\"]",
        )
        .replace("site = \"east\"\n", "site = \"mars\"\n");
    let c = check(&text);
    let sites = "name one of the [[sites]]: east, west, witness";
    expect_line(
        &c,
        &text,
        "\"north\"",
        0,
        &format!("primary \"north\" is not a site; {sites}"),
    );
    expect_line(
        &c,
        &text,
        "south",
        0,
        &format!("service \"web\" has backends at unknown site \"south\"; {sites}"),
    );
    expect_line(
        &c,
        &text,
        "\"mars\"",
        0,
        &format!("sink site \"mars\" is not a site; {sites}"),
    );
}

#[test]
fn duplicate_names() {
    let text = VALID.replace("name = \"west\"", "name = \"east\"").replace(
        "[[streams]]",
        "[[services]]\nname = \"web\"\nport = 8081\n[services.backends]\neast = [\"127.0.0.1:9003\"]\n\n[[streams]]",
    );
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "\"east\"",
        1,
        "site \"east\" is defined twice (first on line 12); give each site its own name",
    );
    expect_line(
        &c,
        &text,
        "\"web\"",
        1,
        "service \"web\" is defined twice (first on line 29); give each service its own name",
    );
}

#[test]
fn primary_without_backends() {
    let text = VALID.replace("primary = \"east\"", "primary = \"witness\"");
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "\"witness\"",
        1,
        "primary \"witness\" has no backends for service \"web\"; add witness = [\"host:port\"] under [services.backends], or name a site that has backends",
    );
}

#[test]
fn address_port_clashes() {
    let text = VALID.replace(
        "api_port = 7401\n[[sites]]\nname = \"west\"",
        "api_port = 7400\n[[sites]]\nname = \"west\"",
    );
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "7400",
        1,
        "127.0.0.11:7400 is used twice: by site east's peer_port and by site east's api_port; give each listener its own port or its site its own address",
    );
    let text = VALID.replace("port = 8080", "port = 7401");
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "7401",
        3,
        "127.0.0.11:7401 is used twice: by site east's api_port and by service web's gateway on site east; give each listener its own port or its site its own address",
    );
}

#[test]
fn durations_that_do_not_parse_are_quoted() {
    let text = VALID
        .replace("grace = \"500ms\"", "grace = \"half a second\"")
        .replace("lease = \"1s\"", "lease = \"10\"");
    let c = check(&text);
    let fix = "write it as a number and a unit, like \"200ms\", \"1s\" or \"1m30s\"";
    expect_line(&c, &text, "\"half a second\"", 0, &format!("grace = \"half a second\" is not a duration (\"half a second\" does not start with a number); {fix}"));
    expect_line(
        &c,
        &text,
        "\"10\"",
        0,
        &format!("lease = \"10\" is not a duration (\"10\" has no unit); {fix}"),
    );
}

#[test]
fn lease_not_longer_than_detection() {
    let text = VALID.replace("lease = \"1s\"", "lease = \"800ms\"");
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "\"800ms\"",
        0,
        "lease 800ms is not longer than detection at the largest round trip (2 × probe_interval 100ms + a heartbeat's timeout 275ms (max_rtt 250ms + probe_interval / 4) + grace 500ms = 975ms): a primary would fence itself on a blip the others do not even act on; set lease above 975ms, or shorten probe_interval, fall, grace or max_rtt",
    );
}

#[test]
fn fewer_than_three_voters_needs_unsafe_two_sites() {
    let witness = "[[sites]]\nname = \"witness\"\naddress = \"127.0.0.13\"\npeer_port = 7400\napi_port = 7401\nwitness = true\n";
    let text = VALID.replace(witness, "");
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "[cluster]",
        0,
        "only 2 voting site(s): with fewer than three, a site cannot tell a dead peer from a cut link, and one failure stops the cluster; add a witness ([[sites]] with witness = true) on a third failure domain, or set unsafe_two_sites = true in [cluster] to accept the risk",
    );
    let text = text.replace(
        "secret = \"0123456789abcdef\"",
        "secret = \"0123456789abcdef\"\nunsafe_two_sites = true",
    );
    assert_eq!(check(&text).code, 0);
}

#[test]
fn syntax_errors_and_unknown_fields_point_at_the_place() {
    let text = VALID.replace("fall = 3", "fall = 3\nfal = 4");
    let c = check(&text);
    let (line, col) = at(&text, "fal =", 0);
    let prefix = format!("{}:{line}:{col}: unknown field `fal`", c.file.display());
    assert!(
        c.stderr.lines().any(|l| l.starts_with(&prefix)
            && l.ends_with("; did you mean `fall`? (docs/config.md lists every field)")),
        "{}",
        c.stderr
    );
    assert_eq!(c.code, 64);
}

/// A misspelt field used to stop the check there ("1 problem(s)") and hide the rest.
#[test]
fn an_unknown_field_hides_no_other_problem() {
    let text = VALID
        .replace("fall = 3", "fal = 3")
        .replace("grace = \"500ms\"", "grace = \"soon\"")
        .replace("primary = \"east\"", "primary = \"north\"")
        .replace(
            "port = 8080",
            "port = 8080\ncheck = { kind = \"http\", pth = \"/up\" }",
        );
    let c = check(&text);
    for (needle, message) in [
        ("fal =", "unknown field `fal`; did you mean `fall`?"),
        ("\"soon\"", "grace = \"soon\" is not a duration"),
        ("\"north\"", "primary \"north\" is not a site"),
        ("pth", "unknown field `pth`; did you mean `path`?"),
    ] {
        let (line, col) = at(&text, needle, 0);
        let want = format!("{}:{line}:{col}: {message}", c.file.display());
        assert!(
            c.stderr.lines().any(|l| l.starts_with(&want)),
            "missing\n  {want}\nin\n{}",
            c.stderr
        );
    }
    assert!(c.stderr.contains("4 problems in"), "{}", c.stderr);
    assert_eq!(c.code, 64);
}

#[test]
fn a_dns_name_without_dns_is_a_warning_and_plurals_read_right() {
    let text = VALID.replace("name = \"web\"", "name = \"web\"\ndns_name = \"www\"");
    let c = check(&text);
    assert_eq!(c.code, 0, "{}", c.stderr);
    let (line, col) = at(&text, "\"www\"", 0);
    assert!(
        c.stderr.contains(&format!(
            "warning: {}:{line}:{col}: service \"web\" has dns_name \"www\", but there is no [dns]",
            c.file.display()
        )),
        "{}",
        c.stderr
    );
    assert!(
        c.stdout
            .contains("1 service, 1 stream, 0 alert targets; 1 warning"),
        "{}",
        c.stdout
    );
}

#[test]
fn every_problem_is_reported_at_once() {
    let text = VALID
        .replace("grace = \"500ms\"", "grace = \"soon\"")
        .replace("primary = \"east\"", "primary = \"north\"")
        .replace("mode = \"primary-standby\"", "mode = \"hot-hot\"");
    let c = check(&text);
    assert_eq!(c.code, 64);
    let problems = c
        .stderr
        .lines()
        .filter(|l| l.starts_with(&c.file.display().to_string()))
        .count();
    assert_eq!(problems, 3, "{}", c.stderr);
    assert!(c.stderr.contains("3 problems in"), "{}", c.stderr);
    expect_line(&c, &text, "\"hot-hot\"", 0, "mode = \"hot-hot\" is not a known value; use one of \"active-active\", \"primary-standby\"");
}

#[test]
fn a_missing_file_is_a_clear_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(["check", "--config", "/nonexistent/outlast.toml"])
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config /nonexistent/outlast.toml"),
        "{err}"
    );
}

#[test]
fn the_example_config_in_the_readme_checks_out() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/local.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(["check", "--config", path])
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `outlast check` on `text` with a time limit: hostile configs must neither panic nor
/// hang (issue: a huge duration panicked, /dev/zero as a secret file ate memory, a FIFO
/// blocked for ever).
fn check_within(text: &str, limit: std::time::Duration) -> Checked {
    let t = std::time::Instant::now();
    let c = check(text);
    assert!(
        t.elapsed() < limit,
        "check took {:?} on\n{text}\n{}",
        t.elapsed(),
        c.stderr
    );
    c
}

#[test]
fn hostile_configs_are_refused_at_once_with_their_place() {
    let second = std::time::Duration::from_secs(1);
    let huge = "\"99999999999999999h\"";
    let cases: Vec<(String, &str, &str)> = vec![
        (
            VALID.replace("lease = \"1s\"", &format!("lease = \"1s\"\nfailback_after = {huge}")),
            huge,
            "failback_after = \"99999999999999999h\" is not a duration (\"99999999999999999h\" is longer than a year)",
        ),
        (
            VALID.replace("port = 8080", &format!("port = 8080\ncheck = {{ kind = \"tcp\", timeout = {huge} }}")),
            huge,
            "timeout = \"99999999999999999h\" is not a duration",
        ),
        (
            VALID.replace("name = \"clicks\"", &format!("name = \"clicks\"\ndedup_window = {huge}")),
            huge,
            "dedup_window = \"99999999999999999h\" is not a duration",
        ),
        (
            VALID.replace("secret = \"0123456789abcdef\"", "secret_file = \"/dev/zero\""),
            "\"/dev/zero\"",
            "cannot read secret_file /dev/zero: it is not a regular file",
        ),
        (
            VALID.replace("secret = \"0123456789abcdef\"", "secret_file = \"/dev/urandom\""),
            "\"/dev/urandom\"",
            "cannot read secret_file /dev/urandom: it is not a regular file",
        ),
        (
            format!("{VALID}\n[api]\ntoken_file = \"/dev/zero\"\n"),
            "\"/dev/zero\"",
            "cannot read token_file: it is not a regular file",
        ),
        (
            format!("{VALID}\n[dns]\nzone = \"shop.test.\"\nport = 5353\n[[dns.push]]\nserver = \"127.0.0.1:53\"\nkey_name = \"k\"\nkey_file = \"/dev/zero\"\n"),
            "\"/dev/zero\"",
            "cannot read key_file: it is not a regular file",
        ),
        (
            VALID.replace("port = 8080", "port = 8080\ncheck = { kind = \"http\", expect = 0 }"),
            "expect = 0",
            "expect = 0 is not an HTTP status",
        ),
        (
            VALID.replace("port = 8080", "port = 0"),
            "port = 0",
            "port = 0 is not a port others can reach",
        ),
        (
            VALID.replacen("api_port = 7401", "api_port = 0", 1),
            "api_port = 0",
            "api_port = 0 is not a port others can reach",
        ),
        (
            VALID.replacen("api_port = 7401", "api_port = 7401\ndata_dir = \"/dev/null\"", 1),
            "\"/dev/null\"",
            "data_dir /dev/null is not a folder",
        ),
        (
            VALID.replace("fall = 3", "fall = 4000000000"),
            "4000000000",
            "fall = 4000000000 is more probes than a failover can wait for",
        ),
    ];
    for (text, needle, message) in cases {
        let c = check_within(&text, second);
        assert_eq!(c.code, 64, "exit status for {message}:\n{}", c.stderr);
        let (line, _) = at(&text, needle, 0);
        let place = format!("{}:{line}:", c.file.display());
        assert!(
            c.stderr
                .lines()
                .any(|l| l.starts_with(&place) && l.contains(message)),
            "want {message} at {place}\n{}",
            c.stderr
        );
    }
    // A FIFO as the secret file: refused, not waited on.
    let dir = tempfile::tempdir().expect("tmp");
    let fifo = dir.path().join("cluster.key");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo")
        .success());
    let text = VALID.replace(
        "secret = \"0123456789abcdef\"",
        &format!("secret_file = \"{}\"", fifo.display()),
    );
    let c = check_within(&text, second);
    assert_eq!(c.code, 64, "{}", c.stderr);
    assert!(c.stderr.contains("is not a regular file"), "{}", c.stderr);
    // The config itself at /dev/zero.
    let t = std::time::Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_outlast"))
        .args(["check", "--config", "/dev/zero"])
        .output()
        .expect("run");
    assert!(
        t.elapsed() < second,
        "check of /dev/zero took {:?}",
        t.elapsed()
    );
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a regular file"));
}

#[test]
fn alert_presets_name_what_they_miss_and_what_they_do_not_read() {
    let text = format!(
        r#"{VALID}
[[alerts]]
kind = "pagerduty"
[[alerts]]
kind = "twilio"
url = "ftp://sms"
[[alerts]]
kind = "slack"
url = "https://hooks.slack.com/services/T/B/X"
every = "1m"
[[alerts]]
kind = "heartbeat"
url = "https://hc-ping.com/abc"
every = "10ms"
"#
    );
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "[[alerts]]",
        0,
        "a pagerduty alert needs its routing_key; add routing_key_file = \"routing_key.txt\" (a file holding it, readable by the agent only)",
    );
    expect_line(
        &c,
        &text,
        "\"ftp://sms\"",
        0,
        "twilio url \"ftp://sms\" is not http(s); write it as \"https://api.twilio.com\"",
    );
    expect_line(
        &c,
        &text,
        "\"1m\"",
        0,
        "every is not read by a slack alert; drop it (it is for kind = heartbeat)",
    );
    expect_line(
        &c,
        &text,
        "\"10ms\"",
        0,
        "every = \"10ms\" is shorter than a second; give \"1m\" or so (the watcher's grace period is longer)",
    );
}

#[test]
fn dependency_mistakes_are_placed() {
    let text = format!(
        r#"{VALID}
[[dependencies]]
name = "payments"
endpoints = ["api.pay.example", "127.0.0.1:0", "10.0.0.5:443"]
services = ["shop"]
egress_port = 8080
check = {{ kind = "dns" }}

[[dependencies]]
name = "mail"
endpoints = ["10.0.0.9:25"]
check = {{ kind = "tcp", query = "x.example" }}
"#
    );
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "\"api.pay.example\"",
        0,
        "endpoint \"api.pay.example\" has no :port; write it as \"host:port\", like \"api.example.com:443\" or \"10.0.0.5:5432\"",
    );
    expect_line(
        &c,
        &text,
        "\"127.0.0.1:0\"",
        0,
        "endpoint port 0 in \"127.0.0.1:0\" cannot be reached; write it as \"host:port\", like \"api.example.com:443\" or \"10.0.0.5:5432\"",
    );
    expect_line(
        &c,
        &text,
        "\"shop\"]",
        0,
        "dependency \"payments\" names service \"shop\", which is not defined; use one of: web",
    );
    expect_line(
        &c,
        &text,
        "8080",
        1,
        "127.0.0.11:8080 is used twice: by service web's gateway on site east and by dependency payments's egress on site east; give each listener its own port or its site its own address",
    );
    expect_line(
        &c,
        &text,
        "{ kind = \"dns\" }",
        0,
        "a dns check needs a query name; add query = \"example.com\" (the name the endpoint must answer for)",
    );
    expect_line(
        &c,
        &text,
        "\"x.example\"",
        0,
        "query is read by kind = \"dns\" checks only; drop query, or set kind = \"dns\"",
    );
    // A service's check cannot be a DNS one.
    let text = VALID.replace(
        "port = 8080\n",
        "port = 8080\ncheck = { kind = \"dns\", query = \"a.example\" }\n",
    );
    let c = check(&text);
    expect_line(
        &c,
        &text,
        "\"dns\"",
        0,
        "check kind \"dns\" is not known here; use \"http\", \"tcp\" or \"udp\"",
    );
}

/// Issue 38: a stream named `..`, `.`, `a/b` or `../x` passed and was joined under
/// `data_dir/streams/`. One name rule for every name that becomes a path, each refused at
/// its place, every problem at once.
#[test]
fn names_that_would_become_paths_are_refused_where_they_stand() {
    for bad in ["..", ".", "a/b", "../x", "with space", ""] {
        let text = VALID.replace("name = \"clicks\"", &format!("name = \"{bad}\""));
        let c = check(&text);
        expect_line(
            &c,
            &text,
            &format!("\"{bad}\"\n[[streams.sinks]]"),
            0,
            &format!(
                "stream name \"{bad}\" is not a plain name; use letters, digits, '-' and '_' only (1 to 64 of them; the name becomes a file name)"
            ),
        );
    }
    let text = VALID.replace("name = \"west\"", "name = \"../west\"");
    let c = check(&text);
    assert_eq!(c.code, 64);
    assert!(
        c.stderr
            .contains("site name \"../west\" is not a plain name"),
        "{}",
        c.stderr
    );
}

/// Issue 39: `check --rtt` says what the timing means at a round trip, in milliseconds and
/// round trips, and refuses a round trip the timing cannot work at.
#[test]
fn check_explains_the_timing_at_a_round_trip() {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("outlast.toml");
    std::fs::write(&file, VALID).expect("write");
    let run = |rtt: &str| {
        Command::new(env!("CARGO_BIN_EXE_outlast"))
            .args(["check", "--config"])
            .arg(&file)
            .args(["--rtt", rtt])
            .output()
            .expect("run outlast check")
    };
    let out = run("80ms");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    for want in [
        "timing at a round trip of 80ms between sites (max_rtt 250ms)",
        "each waits 130ms for its answer (1.6 round trips)",
        "called down at most 830ms after it goes (10.4 round trips)",
        "a new primary acts 1.225s after the old one's last renewal",
        "clients served again about 1.305s after their site is lost (16.3 round trips)",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let out = run("300ms");
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(64), "{text}");
    assert!(
        text.contains("does not hold: a round trip of 300ms is above max_rtt 250ms")
            && text.contains("set [timing] max_rtt to 300ms or more"),
        "{text}"
    );
    let out = run("eighty");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--rtt"));
}
