//! Real processes for tests: `outlast agent` on 127.0.0.11, .12, .13 with a generated config
//! in a temp dir, real backends (python's http.server), status read over HTTP. Each test
//! passes its own port base so tests never share a socket. Everything started is killed by
//! pid on drop. With a network namespace, every process runs inside it and partitions are
//! made with iptables there, touching nothing outside.

// Synchronous test code on plain threads: there is no async runtime here to block.
#![allow(clippy::disallowed_methods)]
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

pub const SITES: [(&str, &str); 3] = [
    ("east", "127.0.0.11"),
    ("west", "127.0.0.12"),
    ("witness", "127.0.0.13"),
];

/// The outlast binary under test: this build's, or `OUTLAST_TEST_BIN` (another build, to
/// show a new test fails on the code before its fix).
pub fn bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("OUTLAST_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_outlast").into())
    })
}

/// Timing of the issue's acceptance: probe 100ms, fall 3, grace 500ms, lease 1s.
pub struct Opts {
    pub port_base: u16,
    pub mode: &'static str,
    /// Start python backends for [east, west]; a test may run its own instead.
    pub python_backends: [bool; 2],
    pub failback: &'static str,
    pub failback_after: &'static str,
    pub extra: String,
    pub netns: bool,
    /// Serve DNS for shop.test. on port base+3, the service named db.shop.test.
    pub dns: bool,
    /// How peer traffic is protected: "certificates" (the default: a CA and a certificate
    /// per site made by `outlast certs` in the config's folder), "secret" or "off".
    pub tls: &'static str,
    /// `[timing] max_rtt`: "50ms" (the sites share this machine) unless a test models
    /// sites far apart.
    pub max_rtt: &'static str,
    /// The python backends log every GET they answer (see [`Cluster::served`]).
    pub backend_logs: bool,
}

impl Opts {
    pub fn new(port_base: u16) -> Self {
        Opts {
            port_base,
            mode: "primary-standby",
            python_backends: [true, true],
            failback: "auto",
            failback_after: "2s",
            extra: String::new(),
            netns: false,
            dns: false,
            tls: "certificates",
            max_rtt: "50ms",
            backend_logs: false,
        }
    }
}

pub struct Cluster {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub opts: Opts,
    pub netns: Option<String>,
    pub agents: BTreeMap<String, Child>,
    backends: Vec<Child>,
    /// A command the next agent is started under (see `start_wrapped`).
    wrapper: Vec<String>,
}

pub fn config_text(o: &Opts, secret: &str) -> String {
    let b = o.port_base;
    let mut s = format!(
        r#"[cluster]
name = "shop"
secret = "{secret}"

[timing]
probe_interval = "100ms"
fall = 3
rise = 3
grace = "500ms"
lease = "1s"
failback_after = "{fa}"
max_rtt = "{rtt}"
"#,
        fa = o.failback_after,
        rtt = o.max_rtt
    );
    for (name, addr) in SITES {
        s.push_str(&format!(
            "\n[[sites]]\nname = \"{name}\"\naddress = \"{addr}\"\npeer_port = {}\napi_port = {}\n",
            b,
            b + 1
        ));
        if name == "witness" {
            s.push_str("witness = true\n");
        }
    }
    s.push_str(&format!(
        r#"
[[services]]
name = "db"
protocol = "http"
mode = "{mode}"
dns_name = "db"
primary = "east"
failback = "{fb}"
port = {gw}
check = {{ kind = "http", path = "/", interval = "100ms", timeout = "100ms" }}
[services.backends]
east = ["127.0.0.1:{be}"]
west = ["127.0.0.1:{bw}"]
"#,
        fb = o.failback,
        mode = o.mode,
        gw = b + 2,
        be = b + 10,
        bw = b + 11
    ));
    if o.dns {
        s.push_str(&format!(
            "\n[dns]\nzone = \"shop.test.\"\nport = {}\nttl = 5\n",
            b + 3
        ));
    }
    match o.tls {
        "certificates" => s.push_str(
            "\n[tls]\nca = \"tls/ca.pem\"\ncert = \"tls/{site}.pem\"\nkey = \"tls/{site}.key\"\n",
        ),
        "off" => s.push_str("\n[tls]\npeer = \"off\"\n"),
        _ => {}
    }
    s.push_str(&o.extra);
    s
}

/// Writes a config made by [`config_text`]; with certificates, makes them beside it
/// (`outlast certs`, kept when they exist).
/// A real HTTP backend (tests/support/backend.py) on 127.0.0.1:`port` whose answers end
/// with "backend `tag`", returned once it accepts connections (a busy machine can take a
/// while to start an interpreter). The caller kills it by its pid.
pub fn http_backend(port: u16, tag: &str) -> Child {
    http_backend_with(port, tag, &[])
}

/// [`http_backend`] with more arguments for backend.py (`"stock"`: python http.server's
/// own defaults, HTTP/1.0 and a listen queue of 5).
pub fn http_backend_with(port: u16, tag: &str, more: &[&str]) -> Child {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
    let child = Command::new("python3")
        .args([script, &port.to_string(), tag])
        .args(more)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 backend");
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let t0 = Instant::now();
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "backend {tag} on {addr} never listened"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child
}

pub fn write_config(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write config");
    if text.contains("cert = \"tls/{site}.pem\"") {
        let out = Command::new(bin())
            .args(["certs", "--config"])
            .arg(path)
            .output()
            .expect("outlast certs");
        assert!(
            out.status.success(),
            "outlast certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// GET over plain HTTP/1.1; `None` when nothing answers.
pub fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let (head, body) = buf.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200").then(|| body.to_string())
}

impl Cluster {
    pub fn new(opts: Opts) -> Self {
        Self::with_secret(opts, "test-secret-0123456789abcdef")
    }

    pub fn with_secret(opts: Opts, secret: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let config = dir.path().join("outlast.toml");
        write_config(&config, &config_text(&opts, secret));
        let netns = opts.netns.then(|| {
            let name = format!("outlast-t{}-{}", opts.port_base, std::process::id());
            run(Command::new("ip").args(["netns", "add", &name]));
            run(Command::new("ip").args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"]));
            name
        });
        let mut c = Cluster {
            dir,
            config,
            opts,
            netns,
            agents: BTreeMap::new(),
            backends: Vec::new(),
            wrapper: Vec::new(),
        };
        let backends = [
            ("east", c.opts.port_base + 10),
            ("west", c.opts.port_base + 11),
        ];
        for (i, (site, port)) in backends.into_iter().enumerate() {
            if !c.opts.python_backends[i] {
                continue;
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/support/backend.py");
            let log = format!("log={}", c.served_log(site).display());
            let child = c
                .command("python3")
                .args([script, &port.to_string(), site])
                .args(c.opts.backend_logs.then_some(log))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("python3 backend");
            c.backends.push(child);
        }
        c
    }

    /// A command that runs inside this cluster's namespace, if it has one.
    pub fn command(&self, program: &str) -> Command {
        match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, program]);
                c
            }
            None => Command::new(program),
        }
    }

    fn served_log(&self, site: &str) -> PathBuf {
        self.dir.path().join(format!("{site}-backend.log"))
    }

    /// When `site`'s python backend answered a GET for `path` (seconds since the epoch,
    /// in order), with `Opts::backend_logs`.
    pub fn served(&self, site: &str, path: &str) -> Vec<f64> {
        let text = std::fs::read_to_string(self.served_log(site)).unwrap_or_default();
        let mut times: Vec<f64> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .filter(|(_, p)| *p == path)
            .filter_map(|(t, _)| t.parse().ok())
            .collect();
        times.sort_by(f64::total_cmp);
        times
    }

    pub fn log_path(&self, site: &str) -> PathBuf {
        self.dir.path().join(format!("{site}.log"))
    }

    pub fn start(&mut self, site: &str) {
        self.start_with_config(site, &self.config.clone());
    }

    /// Starts `site`'s agent with more arguments (`--peer-via ...`).
    pub fn start_with_args(&mut self, site: &str, args: &[&str]) {
        let config = self.config.clone();
        self.spawn_agent(site, &config, args);
    }

    pub fn start_with_config(&mut self, site: &str, config: &Path) {
        self.spawn_agent(site, config, &[]);
    }

    /// Starts `site`'s agent under `wrapper` (a command that runs the rest of its
    /// arguments, like `prlimit --nofile=1024: --`).
    pub fn start_wrapped(&mut self, site: &str, wrapper: &[&str]) {
        let config = self.config.clone();
        self.wrapper = wrapper.iter().map(|s| s.to_string()).collect();
        self.spawn_agent(site, &config, &[]);
        self.wrapper.clear();
    }

    fn spawn_agent(&mut self, site: &str, config: &Path, args: &[&str]) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(site))
            .expect("log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, rest)) => {
                let mut c = self.command(program);
                c.args(rest).arg(bin());
                c
            }
            None => self.command(bin()),
        };
        let child = cmd
            .args(["agent", "--config"])
            .arg(config)
            .args(["--site", site])
            .args(args)
            .env(
                "OUTLAST_LOG",
                std::env::var("OUTLAST_TEST_LOG")
                    .unwrap_or_else(|_| outlast::logging::DEFAULT_FILTER.into()),
            )
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agents.insert(site.to_string(), child);
    }

    pub fn start_all(&mut self) {
        for (name, _) in SITES {
            self.start(name);
        }
    }

    pub fn api(&self, site: &str) -> SocketAddr {
        let addr = SITES.iter().find(|(n, _)| *n == site).expect("site").1;
        format!("{addr}:{}", self.opts.port_base + 1)
            .parse()
            .expect("addr")
    }

    pub fn get(&self, site: &str, path: &str) -> Option<String> {
        match &self.netns {
            None => http_get(self.api(site), path),
            Some(_) => {
                // Read it from inside the namespace with our own CLI.
                if path != "/v1/status" {
                    let out = self
                        .command("python3")
                        .args(["-c", &format!("import urllib.request,sys;sys.stdout.write(urllib.request.urlopen('http://{}{path}',timeout=2).read().decode())", self.api(site))])
                        .output()
                        .ok()?;
                    return out
                        .status
                        .success()
                        .then(|| String::from_utf8_lossy(&out.stdout).to_string());
                }
                let out = self
                    .command(bin())
                    .args([
                        "status",
                        "--json",
                        "--api",
                        &format!("http://{}", self.api(site)),
                    ])
                    .output()
                    .ok()?;
                out.status
                    .success()
                    .then(|| String::from_utf8_lossy(&out.stdout).to_string())
            }
        }
    }

    pub fn status(&self, site: &str) -> Option<Value> {
        self.get(site, "/v1/status")
            .and_then(|b| serde_json::from_str(&b).ok())
    }

    /// Polls until `pred` holds on `site`'s status, or panics after `limit` with the logs.
    pub fn wait_for(
        &self,
        site: &str,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Duration {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(st) = self.status(site) {
                if pred(&st) {
                    return start.elapsed();
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        panic!(
            "{what}: not within {limit:?}\nlast status from {site}: {}\n{}",
            self.status(site)
                .map(|s| s.to_string())
                .unwrap_or_else(|| "none".into()),
            self.logs()
        );
    }

    pub fn logs(&self) -> String {
        // Whole logs kept for a failure that is hard to repeat (`OUTLAST_TEST_LOG_DIR`).
        if let Ok(keep) = std::env::var("OUTLAST_TEST_LOG_DIR") {
            for (name, _) in SITES {
                let _ = std::fs::copy(
                    self.log_path(name),
                    Path::new(&keep).join(format!("{name}.log")),
                );
            }
        }
        let mut out = String::new();
        for (name, _) in SITES {
            let text = std::fs::read_to_string(self.log_path(name)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            out.push_str(&format!("--- {name} (last 40 lines) ---\n"));
            for l in tail.into_iter().rev() {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Waits until every site is up, the leader is known, and east acts as primary.
    pub fn wait_healthy(&self) {
        for (name, _) in SITES {
            self.wait_for(name, Duration::from_secs(20), "cluster healthy", |st| {
                st["leader"].is_string()
                    && st["sites"]
                        .as_array()
                        .is_some_and(|s| s.iter().all(|x| x["state"] == "up"))
                    && st["services"][0]["primary"] == "east"
                    && st["services"][0]["primary_acting"] == true
                    // With [dns]: its answers come from the committed routing.
                    && st["dns"]["ready"] != false
            });
        }
    }

    /// Waits until `observer` sees `primary` as the acting primary of the service.
    pub fn wait_acting(&self, observer: &str, primary: &'static str, limit: Duration) -> Duration {
        self.wait_for(
            observer,
            limit,
            &format!("{primary} acts as primary"),
            acting_primary_is(primary),
        )
    }

    /// Kills the python backend of `site` (east or west).
    pub fn kill_backend(&mut self, site: &str) {
        let i = if site == "east" { 0 } else { 1 };
        let n = self.opts.python_backends[..i]
            .iter()
            .filter(|b| **b)
            .count();
        if let Some(c) = self.backends.get_mut(n) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Address of `site`'s gateway for the test service.
    pub fn gateway(&self, site: &str) -> SocketAddr {
        let addr = SITES.iter().find(|(n, _)| *n == site).expect("site").1;
        format!("{addr}:{}", self.opts.port_base + 2)
            .parse()
            .expect("addr")
    }

    pub fn kill9(&mut self, site: &str) {
        if let Some(mut c) = self.agents.remove(site) {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM; returns the exit status.
    pub fn terminate(&mut self, site: &str, limit: Duration) -> Option<std::process::ExitStatus> {
        let mut c = self.agents.remove(site)?;
        run(Command::new("kill").args(["-TERM", &c.id().to_string()]));
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Ok(Some(status)) = c.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = c.kill();
        let _ = c.wait();
        None
    }

    /// Cuts every packet between sites `a` and `b` only (inside the namespace): an
    /// asymmetric partition, where both still reach the third.
    pub fn cut_between(&self, a: &str, b: &str) {
        let addr = |n: &str| SITES.iter().find(|(s, _)| *s == n).expect("site").1;
        for (src, dst) in [(addr(a), addr(b)), (addr(b), addr(a))] {
            let mut c = self.command("iptables");
            c.args(["-A", "INPUT", "-s", src, "-d", dst, "-j", "DROP"]);
            run(&mut c);
        }
    }

    /// Cuts every packet between `site` and the other sites (inside the namespace).
    pub fn isolate(&self, site: &str) {
        let me = SITES.iter().find(|(n, _)| *n == site).expect("site").1;
        for (other, addr) in SITES {
            if other == site {
                continue;
            }
            for (src, dst) in [(me, addr), (addr, me)] {
                let mut c = self.command("iptables");
                c.args(["-A", "INPUT", "-s", src, "-d", dst, "-j", "DROP"]);
                run(&mut c);
            }
        }
    }

    pub fn heal(&self) {
        run(self.command("iptables").args(["-F", "INPUT"]));
    }
}

/// The value of the first series of Prometheus text `metrics` whose line starts with
/// `series` (a name, or a name and labels); 0 when there is none.
pub fn metric_value(metrics: &str, series: &str) -> f64 {
    metric(metrics, series).unwrap_or(0.0)
}

/// The value of the first series starting with `series`, if the metrics have one.
pub fn metric(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .find(|l| l.starts_with(series))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|v| v.parse().ok())
}

pub fn acting_primary_is(site: &'static str) -> impl Fn(&Value) -> bool {
    move |st| st["services"][0]["primary"] == site && st["services"][0]["primary_acting"] == true
}

/// Every site is up in this status.
pub fn all_up(st: &Value) -> bool {
    st["sites"]
        .as_array()
        .is_some_and(|s| s.iter().all(|x| x["state"] == "up"))
}

pub fn run(c: &mut Command) {
    let out = c
        .output()
        .unwrap_or_else(|e| panic!("cannot run {c:?}: {e}"));
    assert!(
        out.status.success(),
        "{c:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, mut c) in std::mem::take(&mut self.agents) {
            let _ = c.kill();
            let _ = c.wait();
        }
        for mut c in std::mem::take(&mut self.backends) {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(ns) = &self.netns {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

pub fn median_and_worst(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() - 1])
}

/// A small tmpfs mounted at a folder of a test's own (root only), unmounted on drop: a
/// disk a test can fill.
pub struct Tmpfs {
    pub path: PathBuf,
}

impl Tmpfs {
    pub fn mount(path: &Path, size: &str) -> Self {
        std::fs::create_dir_all(path).expect("mount point");
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path));
        Tmpfs {
            path: path.to_path_buf(),
        }
    }

    /// Writes a filler file until the disk is full; its size.
    pub fn fill(&self) -> u64 {
        let mut f = std::fs::File::create(self.path.join("filler")).expect("filler");
        let chunk = vec![0u8; 64 << 10];
        let mut n = 0u64;
        while f.write_all(&chunk).is_ok() {
            n += chunk.len() as u64;
        }
        // Whatever is left smaller than a chunk.
        let byte = [0u8; 512];
        while f.write_all(&byte).is_ok() {
            n += 512;
        }
        let _ = f.sync_all();
        n
    }

    pub fn empty(&self) {
        let _ = std::fs::remove_file(self.path.join("filler"));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// An s3s-fs server on 127.0.0.1:port serving `root` (buckets are its folders).
pub struct S3 {
    pub port: u16,
    pub root: PathBuf,
    child: Option<Child>,
}

fn s3s_fs() -> PathBuf {
    if let Ok(p) = std::env::var("OUTLAST_S3S_FS") {
        return p.into();
    }
    let home = std::env::var("HOME").unwrap_or_default();
    let cargo = Path::new(&home).join(".cargo/bin/s3s-fs");
    if cargo.exists() {
        return cargo;
    }
    PathBuf::from("s3s-fs")
}

impl S3 {
    pub fn start(root: PathBuf, port: u16, bucket: &str) -> Self {
        std::fs::create_dir_all(root.join(bucket)).expect("bucket dir");
        let mut s = S3 {
            port,
            root,
            child: None,
        };
        s.up();
        s
    }

    pub fn up(&mut self) {
        let child = Command::new(s3s_fs())
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", "outlast", "--secret-key", "outlast-secret"])
            .arg(&self.root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs (scripts/test installs it with cargo install --locked)");
        self.child = Some(child);
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().expect("addr");
        let start = Instant::now();
        while TcpStream::connect_timeout(&addr, Duration::from_millis(100)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "s3s-fs did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn down(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn options(&self) -> String {
        format!(
            "{{ endpoint = \"http://127.0.0.1:{}\", allow_http = \"true\", access_key_id = \"outlast\", secret_access_key = \"outlast-secret\", region = \"us-east-1\" }}",
            self.port
        )
    }
}

impl Drop for S3 {
    fn drop(&mut self) {
        self.down();
    }
}

/// Every regular file under `dir` by its path relative to `dir`, with its bytes.
pub fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read_dir").flatten() {
            let p = e.path();
            let t = e.file_type().expect("file type");
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file() {
                let rel = p.strip_prefix(dir).expect("under dir").to_path_buf();
                out.insert(rel, std::fs::read(&p).expect("read file"));
            }
        }
    }
    out
}

/// Ends the PostgreSQL servers under these data dirs (they outlive an agent by design),
/// whatever happened in the test.
pub struct PgReaper(pub Vec<PathBuf>);

impl Drop for PgReaper {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = outlast_db::signal_postmaster(dir, "-QUIT");
        }
    }
}

/// Ends the Redis servers under these data dirs, whatever happened in the test.
pub struct RedisReaper(pub Vec<PathBuf>);

impl Drop for RedisReaper {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = outlast_db::redis::signal_server(dir, "-KILL");
        }
    }
}
