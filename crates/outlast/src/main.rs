//! outlast: keeps services up and data safe when a whole site is lost.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "outlast",
    version,
    about = "Site-loss failover with drills that prove it"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum DnsCommand {
    /// What NAME answers (type A) for a client, and why.
    #[command(
        after_help = "Examples:\n  outlast dns explain www --client 203.0.113.9 --config cluster.toml\n  outlast dns explain www.shop.example --client 198.51.100.0/24   # as a resolver sending ECS"
    )]
    Explain {
        /// The name, in the zone or relative to it.
        name: String,
        /// The client's address (as the resolver's), or ADDRESS/PREFIX (an ECS subnet).
        #[arg(long)]
        client: String,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
        /// Print the raw JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Subcommand)]
enum Command {
    /// Run one site's agent (foreground; SIGTERM drains and exits 0).
    #[command(
        after_help = "Example:\n  outlast agent --config /etc/outlast/cluster.toml --site east"
    )]
    Agent {
        /// The cluster's config file (the same file at every site).
        #[arg(long)]
        config: PathBuf,
        /// Which of the config's [[sites]] this agent is.
        #[arg(long)]
        site: String,
        /// SITE=ADDR: dial that site's peer port at ADDR instead (a drill's fault proxy).
        #[arg(long, value_name = "SITE=ADDR", value_parser = parse_peer_via)]
        peer_via: Vec<(String, std::net::SocketAddr)>,
        /// DATASET/SITE=ADDR: a PostgreSQL standby of DATASET streams from SITE's server at
        /// ADDR instead (a drill's fault proxy, so replication crosses the drill's links).
        #[arg(long, value_name = "DATASET/SITE=ADDR", value_parser = parse_dataset_via)]
        dataset_via: Vec<((String, String), std::net::SocketAddr)>,
    },
    /// Validate a config; print every problem as file:line:col (exit 64 when any).
    #[command(
        after_help = "Examples:\n  outlast check --config examples/local.toml\n  outlast check --config examples/local.toml --rtt 80ms   # what the timing means 80 ms apart"
    )]
    Check {
        /// The config file to check (docs/config.md lists every field).
        #[arg(long)]
        config: PathBuf,
        /// Also explain the [timing] at this round trip between sites: each wait in
        /// milliseconds and round trips, and the failover to expect (exit 64 when the
        /// timing cannot work at it).
        #[arg(long, value_parser = outlast_core::duration::parse_duration)]
        rtt: Option<std::time::Duration>,
    },
    /// Show the cluster as one site's agent sees it.
    #[command(
        after_help = "Examples:\n  outlast status                                   # 127.0.0.1:7401, else ./outlast.toml's or examples/local.toml's sites\n  outlast status --config examples/local.toml --site west\n  outlast status --api http://127.0.0.12:7401 --json"
    )]
    Status {
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
        /// Print the raw /v1/status JSON.
        #[arg(long)]
        json: bool,
    },
    /// Run a drill: start the config's sites here (or --attach to running ones), inject the
    /// scenario's faults under a workload, and write a report (exit 1 when an expectation
    /// fails).
    #[command(
        after_help = "Example:\n  outlast drill --config examples/local.toml --scenario examples/region-loss.toml --report ./report"
    )]
    Drill {
        /// The cluster's config file.
        #[arg(long)]
        config: PathBuf,
        /// The scenario: workload, faults and expectations (docs/scenario.md).
        #[arg(long)]
        scenario: PathBuf,
        /// Folder for report.json and index.html (they are also kept under the data dir).
        #[arg(long)]
        report: Option<PathBuf>,
        /// Drill the agents already running: faults go to their /v1/faults ([api] token).
        #[arg(long)]
        attach: bool,
    },
    /// A local three-site cluster, a click-tracking workload, the region-loss drill and its
    /// report; stops everything it started.
    #[command(after_help = "Example:\n  outlast demo")]
    Demo {
        /// Where the demo's config, data, sinks and report go (default: a new folder
        /// ./outlast-demo/run-TIME per run, the last three kept, the drills in
        /// ./outlast-demo/drills so a second run shows a trend).
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Start a new cluster: a commented config, the cluster secret, an API token, a CA and
    /// one certificate per site, one systemd unit per site. Asks on a terminal for what
    /// the flags do not give; never overwrites a file.
    #[command(
        after_help = "Example:\n  outlast init --dir ./shop --cluster shop --site east=10.0.1.5 --site west=10.0.2.5 --witness arbiter=10.0.3.5 --service web:80:8080\n\nThen copy the folder to /etc/outlast on each machine (keep tls/ca.key elsewhere),\nand start each site: systemctl enable --now outlast@east"
    )]
    Init {
        /// The folder to write into (created; files in it are never overwritten).
        #[arg(long, default_value = ".")]
        dir: PathBuf,
        /// The cluster's name.
        #[arg(long, default_value = "main")]
        cluster: String,
        /// A data site, NAME=ADDRESS (twice or more).
        #[arg(long, value_name = "NAME=ADDRESS", value_parser = outlast::init::parse_site)]
        site: Vec<(String, std::net::IpAddr)>,
        /// The witness: votes, hosts nothing, on a third failure domain.
        #[arg(long, value_name = "NAME=ADDRESS", value_parser = outlast::init::parse_site)]
        witness: Vec<(String, std::net::IpAddr)>,
        /// An HTTP service, NAME:PORT:BACKEND_PORT (the application at 127.0.0.1:BACKEND_PORT
        /// beside each data site's agent).
        #[arg(long, value_name = "NAME:PORT:BACKEND_PORT", value_parser = outlast::init::parse_service)]
        service: Vec<outlast::init::ServiceSpec>,
        /// Every site's agent-to-agent port.
        #[arg(long, default_value_t = 7400)]
        peer_port: u16,
        /// Every site's API port.
        #[arg(long, default_value_t = 7401)]
        api_port: u16,
        /// Where the files will be on each machine (the units' --config path).
        #[arg(long, default_value = "/etc/outlast")]
        install_dir: PathBuf,
        /// The outlast executable the units run.
        #[arg(long, default_value = "/usr/bin/outlast")]
        binary: PathBuf,
        /// Where each agent keeps its state (a folder per site under it).
        #[arg(long, default_value = "/var/lib/outlast")]
        data_dir: PathBuf,
        /// Answer DNS for this zone at every site (each service under its name).
        #[arg(long)]
        dns_zone: Option<String>,
        /// The port DNS is answered on.
        #[arg(long, default_value_t = 53)]
        dns_port: u16,
    },
    /// Make the peer certificates of a config's sites: a CA in DIR when there is none, a
    /// certificate for each site that has none (or is named by --renew). Prints the [tls]
    /// table to add when the config has none.
    #[command(
        after_help = "Examples:\n  outlast certs --config cluster.toml                 # tls/ beside the config\n  outlast certs --config cluster.toml --renew east    # a new certificate for east; its agent picks it up"
    )]
    Certs {
        #[arg(long)]
        config: PathBuf,
        /// Where the CA and certificates are (default: tls/ beside the config).
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Make a new certificate for this site even though it has one.
        #[arg(long, value_name = "SITE")]
        renew: Vec<String>,
        /// How long new certificates are valid.
        #[arg(long, default_value_t = outlast::init::SITE_DAYS)]
        days: u32,
    },
    /// Print a shell completion script (bash, zsh, fish).
    #[command(
        after_help = "Example:\n  outlast completions bash > /etc/bash_completion.d/outlast"
    )]
    Completions { shell: clap_complete::Shell },
    /// Print the man page (roff), or write one page per command into a folder.
    #[command(
        after_help = "Examples:\n  outlast man > outlast.1 && man ./outlast.1\n  outlast man --dir /usr/local/share/man/man1   (outlast.1, outlast-agent.1, ...)"
    )]
    Man {
        /// Write outlast.1 and a page for every command (outlast-agent.1, outlast-backup-run.1,
        /// ...) into DIR instead of printing outlast.1.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// The demo's click-tracking backend (started by `outlast demo`).
    #[command(hide = true)]
    DemoBackend {
        #[arg(long)]
        listen: std::net::SocketAddr,
        #[arg(long)]
        relay: String,
        #[arg(long)]
        site: String,
    },
    /// Move a service's (or a dataset's) primary to another site, planned: writes are held
    /// at the gateways, the target first takes everything the old primary wrote, nothing
    /// acknowledged is lost. Prints how long writes were held.
    #[command(
        after_help = "Examples:\n  OUTLAST_TOKEN=... outlast switchover --dataset orders --to west --config cluster.toml\n  outlast switchover --service web --to east --api http://127.0.0.11:7401 --token-file token"
    )]
    Switchover {
        /// The primary-standby service to move.
        #[arg(long, conflicts_with = "dataset", required_unless_present = "dataset")]
        service: Option<String>,
        /// The dataset to move (with the service that carries it).
        #[arg(long)]
        dataset: Option<String>,
        /// The site that becomes the primary.
        #[arg(long)]
        to: String,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Put a site in maintenance (its primaries move away, planned; it is chosen for
    /// nothing until off) or take it out.
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast maintenance east on --config cluster.toml"
    )]
    Maintenance {
        /// The site.
        site: String,
        /// on | off
        #[arg(value_parser = ["on", "off"])]
        state: String,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Send events to a stream, or read a site's spooled events back.
    Events {
        #[command(subcommand)]
        command: EventsCommand,
    },
    /// DNS as a site's agent answers it: `dns explain` shows what a client gets for a name
    /// and why (steering's selector, the network that decided, the ECS scope).
    Dns {
        #[command(subcommand)]
        command: DnsCommand,
    },
    /// Backups through an agent: a snapshot now, what each repository holds, a restore test.
    Backup {
        #[command(subcommand)]
        command: BackupCommand,
    },
    /// Incidents on the status page: open one, add an update, or list the history. The
    /// cluster writes its own (site down, primary moved, …); these are an operator's words,
    /// committed so every site shows them.
    Incident {
        #[command(subcommand)]
        command: IncidentCommand,
    },
    /// Restore a backup's snapshot into a directory, straight from its repositories (no
    /// agent needed): files, or a PostgreSQL data dir ready to start.
    #[command(
        after_help = "Examples:\n  outlast restore --config cluster.toml uploads --to /srv/uploads.restored\n  outlast restore --config cluster.toml orders --at 2026-12-04T10:00:00Z --to /var/lib/pg-restore"
    )]
    Restore {
        /// The cluster's config file (it names the repositories and their password files).
        #[arg(long)]
        config: PathBuf,
        /// The backup (a [[backups]] name).
        name: String,
        /// A snapshot id (or a unique prefix of one); default: the newest.
        #[arg(long, conflicts_with = "at")]
        snapshot: Option<String>,
        /// The newest snapshot taken at or before this time (RFC 3339 or Unix ms).
        #[arg(long)]
        at: Option<String>,
        /// Only snapshots a site took (a path: backup has one series per data site).
        #[arg(long)]
        site: Option<String>,
        /// Restore from this repository url only (default: the first that opens).
        #[arg(long)]
        repo: Option<String>,
        /// An empty or new directory.
        #[arg(long)]
        to: PathBuf,
    },
    /// Bring a lost site back on an empty machine (the config and its secrets are enough):
    /// the cluster's state from its peers, each dataset member cloned from the live primary
    /// (or restored from the newest backup when no member survives), path: backups from
    /// their newest snapshot; then the agent runs here. Prints a stopwatch per step.
    #[command(
        after_help = "Example:\n  outlast rebuild --config /etc/outlast/cluster.toml --site east"
    )]
    Rebuild {
        /// The cluster's config file (the same file at every site).
        #[arg(long)]
        config: PathBuf,
        /// Which of the config's [[sites]] to rebuild (this machine).
        #[arg(long)]
        site: String,
        /// SITE=ADDR: the agent dials that site's peer port at ADDR instead (a drill's fault
        /// proxy).
        #[arg(long, value_name = "SITE=ADDR", value_parser = parse_peer_via)]
        peer_via: Vec<(String, std::net::SocketAddr)>,
        /// Also write the stopwatch as JSON to this file once the site rejoined.
        #[arg(long, value_name = "FILE")]
        steps_json: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BackupCommand {
    /// Take a snapshot now, at the site that takes this backup; prints each repository's.
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast backup run orders --config cluster.toml"
    )]
    Run {
        name: String,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Without NAME: each backup's last snapshot and verify; with it: every snapshot of it
    /// in each repository.
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast backup list orders --config cluster.toml"
    )]
    List {
        name: Option<String>,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Restore the newest snapshot into a scratch dir, check every file (and start a
    /// PostgreSQL snapshot); prints the restore time and the age of what it restored.
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast backup verify orders --config cluster.toml"
    )]
    Verify {
        name: String,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
}

#[derive(Subcommand)]
enum IncidentCommand {
    /// Open an incident.
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast incident open --title \"Slow checkouts\" --message \"Payments answer in 5 s; we are looking\" --component service-web --config cluster.toml"
    )]
    Open {
        #[arg(long)]
        title: String,
        #[arg(long)]
        message: String,
        /// investigating | identified | monitoring | resolved
        #[arg(long, default_value = "investigating")]
        status: String,
        /// none | maintenance | minor | major | critical
        #[arg(long, default_value = "minor")]
        impact: String,
        /// A component it touches (site-NAME, service-NAME); repeat for more.
        #[arg(long = "component")]
        components: Vec<String>,
        /// Who writes (shown beside the words); default: $USER.
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Add an update to an incident (its id as `outlast incident list` shows it).
    #[command(
        after_help = "Example:\n  OUTLAST_TOKEN=... outlast incident update 3 \"East is back and has caught up\" --status resolved --config cluster.toml"
    )]
    Update {
        id: u64,
        /// What to say.
        message: String,
        /// investigating | identified | monitoring | resolved (default: the incident's own)
        #[arg(long)]
        status: Option<String>,
        /// none | maintenance | minor | major | critical
        #[arg(long)]
        impact: Option<String>,
        #[arg(long = "component")]
        components: Vec<String>,
        #[arg(long)]
        by: Option<String>,
        #[command(flatten)]
        auth: outlast::commands::TokenArg,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// The committed incidents, newest first.
    List {
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
}

#[derive(Subcommand)]
enum EventsCommand {
    /// Send NDJSON (one JSON object a line) from FILE or stdin; prints the ack.
    #[command(
        after_help = "Example:\n  echo '{\"id\":\"c1\",\"page\":\"/\"}' | outlast events send clicks --config examples/local.toml"
    )]
    Send {
        /// The stream's name (a [[streams]] of the config).
        stream: String,
        /// A file of NDJSON, or "-" (the default) for stdin.
        #[arg(default_value = "-")]
        file: String,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
    /// Print this site's events still in its spool, from a sequence number on.
    #[command(
        after_help = "Example:\n  outlast events tail clicks --config examples/local.toml --site west --follow"
    )]
    Tail {
        /// The stream's name (a [[streams]] of the config).
        stream: String,
        /// The first sequence number to print.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Keep printing new events as they arrive.
        #[arg(long)]
        follow: bool,
        #[command(flatten)]
        target: outlast::commands::ApiTarget,
    },
}

fn parse_dataset_via(s: &str) -> Result<((String, String), std::net::SocketAddr), String> {
    let (name, addr) = parse_peer_via(s)?;
    let (dataset, site) = name.split_once('/').ok_or_else(|| {
        format!("{s:?} is not DATASET/SITE=ADDR (like orders/west=127.0.0.1:7500)")
    })?;
    Ok(((dataset.to_string(), site.to_string()), addr))
}

fn parse_peer_via(s: &str) -> Result<(String, std::net::SocketAddr), String> {
    let (site, addr) = s
        .split_once('=')
        .ok_or_else(|| format!("{s:?} is not SITE=ADDR (like west=127.0.0.1:7500)"))?;
    let addr = addr
        .parse()
        .map_err(|e| format!("{addr:?} is not an address like 127.0.0.1:7500: {e}"))?;
    Ok((site.to_string(), addr))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    outlast::logging::init();
    let code = match cli.command {
        Command::Check { config, rtt } => outlast::commands::check(&config, rtt),
        Command::Init {
            dir,
            cluster,
            site,
            witness,
            service,
            peer_port,
            api_port,
            install_dir,
            binary,
            data_dir,
            dns_zone,
            dns_port,
        } => {
            let asked = site.is_empty() && witness.is_empty();
            let mut spec = outlast::init::InitSpec {
                dir,
                cluster,
                sites: site
                    .into_iter()
                    .map(|(name, address)| (name, address, false))
                    .chain(witness.into_iter().map(|(n, a)| (n, a, true)))
                    .map(|(name, address, witness)| outlast::init::SiteSpec {
                        name,
                        address,
                        witness,
                    })
                    .collect(),
                services: service,
                peer_port,
                api_port,
                install_dir,
                binary,
                data_dir,
                dns_zone,
                dns_port,
            };
            let ready = if asked {
                outlast::init::ask(&mut spec)
            } else {
                Ok(())
            };
            match ready.and_then(|()| outlast::init::init(&spec)) {
                Ok(files) => {
                    for f in files {
                        println!("wrote {}", f.display());
                    }
                    println!(
                        "next: outlast check --config {}/outlast.toml; copy the folder to {} on each site (keep tls/ca.key off them); systemctl enable --now outlast@SITE",
                        spec.dir.display(),
                        spec.install_dir.display()
                    );
                    0
                }
                Err(e) => {
                    eprintln!("error: {e:#}");
                    2
                }
            }
        }
        Command::Certs {
            config,
            dir,
            renew,
            days,
        } => outlast::commands::certs(&config, dir, &renew, days),
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cmd, "outlast", &mut out);
            outlast::commands::emit(&out)
        }
        Command::Man { dir } => {
            let cmd = <Cli as clap::CommandFactory>::command();
            match dir {
                Some(dir) => outlast::commands::man_pages(cmd, &dir),
                None => {
                    let mut out = Vec::new();
                    match clap_mangen::Man::new(outlast::commands::for_man(cmd)).render(&mut out) {
                        Ok(()) => outlast::commands::emit(&out),
                        Err(e) => {
                            eprintln!("error: {e}");
                            1
                        }
                    }
                }
            }
        }
        Command::Agent {
            config,
            site,
            peer_via,
            dataset_via,
        } => match outlast::commands::load_config(&config) {
            Err(code) => code,
            Ok(config) => runtime(async move {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone());
                let mut opts = agent_options(peer_via);
                opts.dataset_via = dataset_via.into_iter().collect();
                outlast::agent::run(config, &site, opts, shutdown).await
            }),
        },
        Command::Status { target, json } => runtime(outlast::commands::status(&target, json)),
        Command::Drill {
            config,
            scenario,
            report,
            attach,
        } => outlast::demo::drill_command(config, scenario, report, attach),
        Command::Demo { dir } => outlast::demo::demo_command(dir),
        Command::DemoBackend {
            listen,
            relay,
            site,
        } => runtime(outlast::demo::backend(listen, relay, site)),
        Command::Switchover {
            service,
            dataset,
            to,
            auth,
            target,
        } => runtime(outlast::commands::switchover(
            &target,
            &auth,
            outlast_web::SwitchoverRequest {
                service,
                dataset,
                to,
            },
        )),
        Command::Maintenance {
            site,
            state,
            auth,
            target,
        } => runtime(outlast::commands::maintenance(
            &target,
            &auth,
            outlast_web::MaintenanceRequest {
                site,
                on: state == "on",
            },
        )),
        Command::Events { command } => match command {
            EventsCommand::Send {
                stream,
                file,
                target,
            } => runtime(outlast::commands::events_send(&target, &stream, &file)),
            EventsCommand::Tail {
                stream,
                from,
                follow,
                target,
            } => runtime(outlast::commands::events_tail(
                &target, &stream, from, follow,
            )),
        },
        Command::Incident { command } => match command {
            IncidentCommand::Open {
                title,
                message,
                status,
                impact,
                components,
                by,
                auth,
                target,
            } => runtime(outlast::commands::incident(
                &target,
                &auth,
                None,
                outlast_core::status::IncidentRequest {
                    title: Some(title),
                    status: Some(status),
                    impact: Some(impact),
                    message,
                    by: by.or_else(|| std::env::var("USER").ok()),
                    components,
                },
            )),
            IncidentCommand::Update {
                id,
                message,
                status,
                impact,
                components,
                by,
                auth,
                target,
            } => runtime(outlast::commands::incident(
                &target,
                &auth,
                Some(id),
                outlast_core::status::IncidentRequest {
                    title: None,
                    status,
                    impact,
                    message,
                    by: by.or_else(|| std::env::var("USER").ok()),
                    components,
                },
            )),
            IncidentCommand::List { target } => runtime(outlast::commands::incidents(&target)),
        },
        Command::Dns { command } => match command {
            DnsCommand::Explain {
                name,
                client,
                target,
                json,
            } => runtime(outlast::commands::dns_explain(
                &target, &name, &client, json,
            )),
        },
        Command::Backup { command } => match command {
            BackupCommand::Run { name, auth, target } => {
                runtime_code(outlast::backup_cli::run(&target, &auth, &name))
            }
            BackupCommand::List { name, auth, target } => {
                runtime_code(outlast::backup_cli::list(&target, &auth, name.as_deref()))
            }
            BackupCommand::Verify { name, auth, target } => {
                runtime_code(outlast::backup_cli::verify(&target, &auth, &name))
            }
        },
        Command::Rebuild {
            config,
            site,
            peer_via,
            steps_json,
        } => match outlast::commands::load_config(&config) {
            Err(code) => code,
            Ok(config) => runtime(async move {
                let shutdown = CancellationToken::new();
                spawn_signal_handler(shutdown.clone());
                let opts = outlast::rebuild::RebuildOptions {
                    agent: agent_options(peer_via),
                    steps_json,
                };
                outlast::rebuild::run(config, &site, opts, shutdown).await
            }),
        },
        Command::Restore {
            config,
            name,
            snapshot,
            at,
            site,
            repo,
            to,
        } => runtime_code(async move {
            outlast::backup_cli::restore(outlast::backup_cli::RestoreArgs {
                config: &config,
                name: &name,
                snapshot,
                at,
                site,
                repo,
                to,
            })
            .await
        }),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

/// An agent's options from its command line and environment.
fn agent_options(peer_via: Vec<(String, std::net::SocketAddr)>) -> outlast::agent::AgentOptions {
    outlast::agent::AgentOptions {
        peer_via: peer_via.into_iter().collect(),
        dataset_via: Default::default(),
        fault_token: std::env::var("OUTLAST_FAULT_TOKEN")
            .ok()
            .filter(|t| !t.is_empty()),
    }
}

/// Runs a command that says its own exit code.
fn runtime_code(fut: impl std::future::Future<Output = anyhow::Result<i32>>) -> i32 {
    let code = std::sync::atomic::AtomicI32::new(0);
    let ran = runtime(async {
        code.store(fut.await?, std::sync::atomic::Ordering::SeqCst);
        Ok(())
    });
    if ran != 0 {
        return ran;
    }
    code.load(std::sync::atomic::Ordering::SeqCst)
}

pub fn runtime(fut: impl std::future::Future<Output = anyhow::Result<()>>) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the runtime: {e}");
            return 1;
        }
    };
    match rt.block_on(fut) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            1
        }
    }
}

fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot watch SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM"),
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT"),
        }
        token.cancel();
    });
}
