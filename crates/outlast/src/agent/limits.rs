//! How many connections each listener of an agent may hold, from the process's file limit.
//!
//! The agent raises its soft file limit to the hard one at start (a 1,024 default let 1,100
//! idle connections take a site's API and gateway away). Then every listener gets a cap,
//! and the caps together stay within the limit: the peer port and the API keep their share
//! whatever the gateways' clients do, and a proxied gateway connection counts twice (the
//! client's and the backend's).

use std::collections::BTreeMap;

use outlast_core::Config;

/// File descriptors kept for everything that is not a listener's connection: Raft's files,
/// spool segments, sinks' and alerts' clients, DNS sockets, health probes.
const RESERVED: u64 = 512;
/// The peer port's cap: peers are few, but each may open several connections.
const PEER_CONNECTIONS: usize = 1024;

/// Each listener's cap.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub peer: usize,
    pub api: usize,
    /// Per service gateway.
    pub gateways: BTreeMap<String, usize>,
}

/// Raises the soft file limit to the hard limit; the soft limit in force afterwards.
pub fn raise_fd_limit() -> u64 {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return 1024;
    };
    if hard > soft {
        match setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
            Ok(()) => {
                tracing::info!(from = soft, to = hard, "raised the open file limit");
                return hard;
            }
            Err(e) => tracing::warn!(soft, hard, error = %e, "could not raise the open file limit"),
        }
    }
    soft
}

/// The caps for `config` under a file limit of `fds`: the configured ones, the gateways'
/// scaled down together when they would not fit (logged, with what to raise).
pub fn caps(config: &Config, fds: u64) -> Caps {
    let api = config.api.max_connections;
    let peer = PEER_CONNECTIONS;
    let wanted: BTreeMap<String, usize> = config
        .services
        .iter()
        .map(|s| (s.name.clone(), s.max_connections))
        .collect();
    let room = fds.saturating_sub(RESERVED + (api + peer) as u64);
    // A TCP or HTTP client holds two descriptors (its own and the backend's); a UDP
    // session one (its upstream socket).
    let need: u64 = config
        .services
        .iter()
        .map(|s| match s.protocol {
            outlast_core::config::Protocol::Udp => s.max_connections as u64,
            _ => 2 * s.max_connections as u64,
        })
        .sum();
    let gateways = if need <= room || need == 0 {
        wanted
    } else {
        let scale = room as f64 / need as f64;
        let scaled: BTreeMap<String, usize> = wanted
            .iter()
            .map(|(n, c)| (n.clone(), ((*c as f64 * scale) as usize).max(1)))
            .collect();
        // Lowered caps that still take a thousand clients are routine (a test machine's
        // limits); below that a person must act.
        if scaled.values().any(|c| *c < 1000) {
            tracing::warn!(
                fds,
                ?scaled,
                "the open file limit is too low for the gateways: caps lowered below 1000; \
                 raise the limit (LimitNOFILE= in the unit) or lower max_connections"
            );
        } else {
            tracing::info!(
                fds,
                ?scaled,
                "the open file limit is lower than every gateway's max_connections needs: caps \
                 lowered (raise LimitNOFILE= in the unit for the full caps)"
            );
        }
        scaled
    };
    Caps {
        peer,
        api,
        gateways,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(services: &[(&str, u64)]) -> Config {
        let mut text = String::from(
            "[cluster]\nname = \"c\"\nsecret = \"s\"\n\
             [[sites]]\nname = \"a\"\naddress = \"127.0.0.11\"\npeer_port = 1\napi_port = 2\n\
             [[sites]]\nname = \"b\"\naddress = \"127.0.0.12\"\npeer_port = 1\napi_port = 2\n\
             [[sites]]\nname = \"w\"\naddress = \"127.0.0.13\"\npeer_port = 1\napi_port = 2\nwitness = true\n",
        );
        for (i, (name, max)) in services.iter().enumerate() {
            text.push_str(&format!(
                "[[services]]\nname = \"{name}\"\nport = {}\nmax_connections = {max}\n[services.backends]\na = [\"127.0.0.1:9{i:03}\"]\n",
                8000 + i
            ));
        }
        Config::parse(std::path::Path::new("t.toml"), &text).expect("valid")
    }

    #[test]
    fn the_caps_fit_the_file_limit_and_leave_the_api_and_peers_theirs() {
        let c = config(&[("web", 10_000), ("db", 5_000)]);
        let roomy = caps(&c, 1 << 20);
        assert_eq!(roomy.gateways["web"], 10_000);
        assert_eq!((roomy.api, roomy.peer), (8192, 1024));
        let tight = caps(&c, 16384);
        let used: u64 = tight.gateways.values().map(|c| 2 * *c as u64).sum::<u64>()
            + (tight.api + tight.peer) as u64
            + RESERVED;
        assert!(used <= 16384, "{tight:?}");
        assert_eq!((tight.api, tight.peer), (8192, 1024), "never scaled down");
        assert!(
            tight.gateways["web"] > tight.gateways["db"],
            "in proportion"
        );
        assert!(caps(&c, 10).gateways.values().all(|c| *c >= 1));
    }
}
