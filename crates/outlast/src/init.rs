//! `outlast init` (a new cluster's files: a commented config, its secrets, a CA and one
//! certificate per site, one systemd unit per site) and `outlast certs` (the certificates
//! of an existing config: made when missing, renewed on request).
//!
//! Nothing is overwritten: a file that exists is reported and the command stops before
//! writing anything (`certs` keeps a site's existing certificate unless told to renew it).

use std::io::{BufRead, IsTerminal, Write};
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use outlast_web::tls::issue;

/// How long a CA made here is valid, in days.
pub const CA_DAYS: u32 = 3650;
/// How long a site certificate made here is valid, in days.
pub const SITE_DAYS: u32 = 397;

/// One site of a new cluster.
#[derive(Debug, Clone)]
pub struct SiteSpec {
    pub name: String,
    pub address: IpAddr,
    pub witness: bool,
}

/// One HTTP service of a new cluster: `port` on each data site's address, the
/// application at `127.0.0.1:backend_port` beside each data site's agent.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    pub name: String,
    pub port: u16,
    pub backend_port: u16,
}

/// What `outlast init` makes.
#[derive(Debug, Clone)]
pub struct InitSpec {
    pub dir: PathBuf,
    pub cluster: String,
    pub sites: Vec<SiteSpec>,
    pub services: Vec<ServiceSpec>,
    pub peer_port: u16,
    pub api_port: u16,
    /// Where the files will live on each machine (the units' --config path).
    pub install_dir: PathBuf,
    /// The outlast executable the units run.
    pub binary: PathBuf,
    /// Where each agent keeps its state (a folder per site under it).
    pub data_dir: PathBuf,
    /// Every site answers DNS for this zone on `dns_port` (each service as its name).
    pub dns_zone: Option<String>,
    pub dns_port: u16,
}

/// `NAME=ADDRESS`.
pub fn parse_site(s: &str) -> Result<(String, IpAddr), String> {
    let (n, a) = s
        .split_once('=')
        .ok_or_else(|| format!("\"{s}\" is not NAME=ADDRESS (e.g. east=10.0.1.5)"))?;
    let name = n.trim();
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!(
            "site name \"{name}\" is not a plain name (letters, digits, '-', '_')"
        ));
    }
    let addr = a
        .trim()
        .parse()
        .map_err(|_| format!("\"{}\" is not an IP address", a.trim()))?;
    Ok((name.to_string(), addr))
}

/// `NAME:PORT:BACKEND_PORT`.
pub fn parse_service(s: &str) -> Result<ServiceSpec, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let [name, port, backend] = parts[..] else {
        return Err(format!(
            "\"{s}\" is not NAME:PORT:BACKEND_PORT (e.g. web:80:8080: the gateway on port 80, the application on 127.0.0.1:8080 at each site)"
        ));
    };
    let port_of = |p: &str| match p.trim().parse::<u16>() {
        Ok(0) | Err(_) => Err(format!("\"{p}\" in \"{s}\" is not a port (1-65535)")),
        Ok(n) => Ok(n),
    };
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err(format!("service name \"{name}\" is not a plain name"));
    }
    Ok(ServiceSpec {
        name: name.to_string(),
        port: port_of(port)?,
        backend_port: port_of(backend)?,
    })
}

fn random_hex(bytes: usize) -> String {
    let v: Vec<u8> = (0..bytes).map(|_| rand::random::<u8>()).collect();
    hex::encode(v)
}

/// A file written with `mode` (0600 for keys and secrets).
fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create {}", parent.display()))?;
    }
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    f.write_all(text.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    f.sync_all()
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(())
}

/// The config `init` writes: every field it sets is explained where it stands.
pub fn config_text(spec: &InitSpec) -> String {
    let data: Vec<&SiteSpec> = spec.sites.iter().filter(|s| !s.witness).collect();
    let mut t = format!(
        "# The cluster's config, written by `outlast init`: the same file at every site; each\n\
         # agent is told which site it is (outlast agent --config FILE --site NAME).\n\
         # Every field is described in docs/config.md; `outlast check --config FILE` checks it.\n\
         \n\
         [cluster]\n\
         name = \"{cluster}\"\n\
         # Agents authenticate every peer request with this secret. Keep it readable by the\n\
         # agent only, and the same at every site.\n\
         secret_file = \"cluster.key\"\n\
         \n\
         [timing]\n\
         # How often each site probes the others and the services' backends, how many misses\n\
         # make a target down (fall) and passes make it up again (rise), how long a site must\n\
         # be down before its primaries move (grace), and the primary's lease.\n\
         probe_interval = \"200ms\"\n\
         fall = 3\n\
         rise = 3\n\
         grace = \"1s\"\n\
         lease = \"2s\"\n\
         failback_after = \"30s\"\n\
         \n\
         [tls]\n\
         # Peer traffic is TLS 1.3 with a certificate at both ends, issued by this cluster's\n\
         # CA (tls/ca.pem; its key tls/ca.key belongs in a safe place, not on the sites).\n\
         # Replace a site's files to rotate its certificate: agents read them again when they\n\
         # change (or on SIGHUP). `outlast certs --config FILE --renew SITE` makes new ones.\n\
         ca = \"tls/ca.pem\"\n\
         cert = \"tls/{{site}}.pem\"\n\
         key = \"tls/{{site}}.key\"\n\
         \n\
         [api]\n\
         # Switchover, maintenance, incident updates and drills' faults want this token\n\
         # (outlast ... --token-file api.token, or OUTLAST_TOKEN).\n\
         token_file = \"api.token\"\n",
        cluster = spec.cluster
    );
    for s in &spec.sites {
        t.push_str(&format!(
            "\n[[sites]]\nname = \"{}\"\naddress = \"{}\"   # gateways bind here; peers dial it\npeer_port = {}\napi_port = {}\n\
             data_dir = \"{}/{}\"   # the Raft log, state and event spool\n",
            s.name,
            s.address,
            spec.peer_port,
            spec.api_port,
            spec.data_dir.display(),
            s.name
        ));
        if s.witness {
            t.push_str(
                "witness = true            # votes, hosts nothing: the third failure domain\n",
            );
        }
    }
    if let Some(zone) = &spec.dns_zone {
        let zone = if zone.ends_with('.') {
            zone.clone()
        } else {
            format!("{zone}.")
        };
        t.push_str(&format!(
            "\n[dns]\n# Every site answers for this zone with the addresses of the sites that serve each\n\
             # service; delegate the zone to the sites (NS records) so clients follow a loss.\n\
             zone = \"{zone}\"\nport = {}\nttl = 5\n",
            spec.dns_port
        ));
    }
    for (i, svc) in spec.services.iter().enumerate() {
        let primary = data.first().map(|s| s.name.as_str()).unwrap_or("");
        t.push_str(&format!(
            "\n[[services]]\nname = \"{name}\"\nprotocol = \"http\"\n\
             # One site serves at a time; the others' gateways forward to it, and it moves\n\
             # when its site is lost.\n\
             mode = \"primary-standby\"\nprimary = \"{primary}\"\n\
             # Back to the primary once it has been healthy for failback_after.\n\
             failback = \"auto\"\nport = {port}\n{dns}\
             check = {{ kind = \"http\", path = \"/\", interval = \"200ms\", timeout = \"200ms\" }}\n\
             [services.backends]\n",
            name = svc.name,
            port = svc.port,
            dns = if spec.dns_zone.is_some() {
                format!("dns_name = \"{}\"\n", svc.name)
            } else {
                String::new()
            },
        ));
        if i == 0 {
            t.push_str("# The application beside each data site's agent.\n");
        }
        for s in &data {
            t.push_str(&format!(
                "{} = [\"127.0.0.1:{}\"]\n",
                s.name, svc.backend_port
            ));
        }
    }
    t
}

/// One site's systemd unit.
pub fn unit_text(spec: &InitSpec, site: &str) -> String {
    format!(
        "# outlast agent for site {site} of cluster {cluster} (written by `outlast init`).\n\
         # Install: copy the init folder to {dir} on this site's machine, then\n\
         #   cp outlast-{site}.service /etc/systemd/system/ && systemctl enable --now outlast-{site}\n\
         # (the Debian package's outlast@.service does the same: systemctl enable --now outlast@{site})\n\
         [Unit]\n\
         Description=outlast agent, site {site}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         ExecStart={bin} agent --config {dir}/outlast.toml --site {site}\n\
         ExecReload=/bin/kill -HUP $MAINPID\n\
         KillSignal=SIGTERM\n\
         TimeoutStopSec=30\n\
         Restart=on-failure\n\
         RestartSec=1\n\
         StateDirectory=outlast\n\
         WorkingDirectory={data}\n\
         LimitNOFILE=65536\n\
         NoNewPrivileges=yes\n\
         ProtectSystem=strict\n\
         AmbientCapabilities=CAP_NET_BIND_SERVICE\n\
         ProtectHome=yes\n\
         PrivateTmp=yes\n\
         PrivateDevices=yes\n\
         ProtectKernelTunables=yes\n\
         ProtectKernelModules=yes\n\
         ProtectControlGroups=yes\n\
         RestrictSUIDSGID=yes\n\
         LockPersonality=yes\n\
         ReadWritePaths={data}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        cluster = spec.cluster,
        dir = spec.install_dir.display(),
        bin = spec.binary.display(),
        data = spec.data_dir.display(),
    )
}

/// Checks a spec before anything is written.
fn check_spec(spec: &InitSpec) -> anyhow::Result<()> {
    let mut names = std::collections::BTreeSet::new();
    for s in &spec.sites {
        if !names.insert(s.name.as_str()) {
            bail!("site {} is given twice", s.name);
        }
    }
    let voters = spec.sites.len();
    if voters < 3 {
        bail!(
            "{voters} site(s): give at least two data sites (--site) and a witness (--witness) on a third failure domain"
        );
    }
    if spec.sites.iter().filter(|s| !s.witness).count() < 2 {
        bail!("give at least two data sites (--site NAME=ADDRESS)");
    }
    if spec.dns_zone.is_some() && [spec.peer_port, spec.api_port].contains(&spec.dns_port) {
        bail!("--dns-port is one of the agents' ports");
    }
    if spec.peer_port == spec.api_port {
        bail!("--peer-port and --api-port are the same");
    }
    for svc in &spec.services {
        if [spec.peer_port, spec.api_port].contains(&svc.port) {
            bail!(
                "service {} uses port {}, which the agents use",
                svc.name,
                svc.port
            );
        }
    }
    Ok(())
}

/// Writes a new cluster's files under `spec.dir`; the paths written.
pub fn init(spec: &InitSpec) -> anyhow::Result<Vec<PathBuf>> {
    check_spec(spec)?;
    let d = &spec.dir;
    let mut files: Vec<(PathBuf, String, u32)> = vec![
        (d.join("outlast.toml"), config_text(spec), 0o644),
        (d.join("cluster.key"), random_hex(32) + "\n", 0o600),
        (d.join("api.token"), random_hex(24) + "\n", 0o600),
    ];
    let ca = issue::ca(&spec.cluster, CA_DAYS)?;
    for s in &spec.sites {
        let site = issue::site(&ca, &s.name, &[s.address.to_string()], SITE_DAYS)?;
        files.push((d.join(format!("tls/{}.pem", s.name)), site.cert, 0o644));
        files.push((d.join(format!("tls/{}.key", s.name)), site.key, 0o600));
        files.push((
            d.join(format!("systemd/outlast-{}.service", s.name)),
            unit_text(spec, &s.name),
            0o644,
        ));
    }
    files.push((d.join("tls/ca.pem"), ca.cert, 0o644));
    files.push((d.join("tls/ca.key"), ca.key, 0o600));
    let taken: Vec<String> = files
        .iter()
        .filter(|(p, _, _)| p.exists())
        .map(|(p, _, _)| p.display().to_string())
        .collect();
    if !taken.is_empty() {
        bail!(
            "refusing to overwrite {} (remove them, or init into another --dir)",
            taken.join(", ")
        );
    }
    for (p, text, mode) in &files {
        write_file(p, text, *mode)?;
    }
    Ok(files.into_iter().map(|(p, _, _)| p).collect())
}

/// Asks for what flags did not give, on a terminal.
pub fn ask(spec: &mut InitSpec) -> anyhow::Result<()> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        bail!("no --site given and no terminal to ask on: pass --cluster, --site NAME=ADDRESS (twice or more), --witness NAME=ADDRESS and --service NAME:PORT:BACKEND_PORT");
    }
    let mut lines = stdin.lock().lines();
    let mut prompt = |q: &str| -> anyhow::Result<String> {
        print!("{q}");
        std::io::stdout().flush().ok();
        Ok(lines
            .next()
            .transpose()?
            .unwrap_or_default()
            .trim()
            .to_string())
    };
    let name = prompt(&format!("Cluster name [{}]: ", spec.cluster))?;
    if !name.is_empty() {
        spec.cluster = name;
    }
    println!("Data sites, one per line as NAME=ADDRESS (an empty line ends):");
    loop {
        let l = prompt("  site: ")?;
        if l.is_empty() {
            break;
        }
        match parse_site(&l) {
            Ok((name, address)) => spec.sites.push(SiteSpec {
                name,
                address,
                witness: false,
            }),
            Err(e) => println!("  {e}"),
        }
    }
    loop {
        let l = prompt("Witness (NAME=ADDRESS, on a third failure domain): ")?;
        match parse_site(&l) {
            Ok((name, address)) => {
                spec.sites.push(SiteSpec {
                    name,
                    address,
                    witness: true,
                });
                break;
            }
            Err(e) if l.is_empty() => {
                println!("  a witness is needed: with two sites, neither can tell a dead peer from a cut link ({e})")
            }
            Err(e) => println!("  {e}"),
        }
    }
    println!("HTTP services, one per line as NAME:PORT:BACKEND_PORT (an empty line ends):");
    loop {
        let l = prompt("  service: ")?;
        if l.is_empty() {
            break;
        }
        match parse_service(&l) {
            Ok(s) => spec.services.push(s),
            Err(e) => println!("  {e}"),
        }
    }
    Ok(())
}

/// `outlast certs`: the CA (made when `dir` has none) and a certificate for each of the
/// config's sites that has none, or is listed in `renew`; what was written.
pub fn certs(
    config: &outlast_core::config::Config,
    dir: &Path,
    renew: &[String],
    days: u32,
) -> anyhow::Result<Vec<String>> {
    for r in renew {
        if !config.sites.iter().any(|s| &s.name == r) {
            bail!("--renew {r}: the config has no such site");
        }
    }
    let (ca_pem, ca_key) = (dir.join("ca.pem"), dir.join("ca.key"));
    let mut done = Vec::new();
    let ca = match (ca_pem.exists(), ca_key.exists()) {
        (true, true) => issue::Pem {
            cert: std::fs::read_to_string(&ca_pem)
                .with_context(|| format!("cannot read {}", ca_pem.display()))?,
            key: std::fs::read_to_string(&ca_key)
                .with_context(|| format!("cannot read {}", ca_key.display()))?,
        },
        (false, false) => {
            let ca = issue::ca(&config.cluster.name, CA_DAYS)?;
            write_file(&ca_pem, &ca.cert, 0o644)?;
            write_file(&ca_key, &ca.key, 0o600)?;
            done.push(format!(
                "made a CA: {} (keep {} safe)",
                ca_pem.display(),
                ca_key.display()
            ));
            ca
        }
        _ => bail!(
            "{} has one of ca.pem and ca.key without the other",
            dir.display()
        ),
    };
    for s in &config.sites {
        let (cert, key) = (
            dir.join(format!("{}.pem", s.name)),
            dir.join(format!("{}.key", s.name)),
        );
        let again = renew.contains(&s.name);
        if cert.exists() && !again {
            continue;
        }
        let made = issue::site(&ca, &s.name, &[s.address.to_string()], days)?;
        // A renewal replaces the files in one step each (rename), so an agent reading
        // them never sees half a key.
        for (path, text, mode) in [(&cert, &made.cert, 0o644), (&key, &made.key, 0o600)] {
            let tmp = path.with_extension("new");
            let _ = std::fs::remove_file(&tmp);
            write_file(&tmp, text, mode)?;
            std::fs::rename(&tmp, path)
                .with_context(|| format!("cannot replace {}", path.display()))?;
        }
        done.push(format!(
            "{} a certificate for {} ({}, valid {days} days)",
            if again { "renewed" } else { "made" },
            s.name,
            cert.display()
        ));
    }
    Ok(done)
}
