//! `[[dependencies]]`: checked, with every default filled in.

use std::collections::HashMap;
use std::ops::Range;
use std::time::Duration;

use super::raw::*;
use super::validate::{check, Ctx};
use super::*;

/// The most endpoints one dependency may list.
const MAX_ENDPOINTS: usize = 16;

/// Splits `host:port` (`[v6]:port` for an IPv6 address); why not, when it is not one.
pub fn split_endpoint(s: &str) -> Result<(String, u16), String> {
    let (host, port) = s
        .rsplit_once(':')
        .ok_or_else(|| format!("\"{s}\" has no :port"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port: u16 = port
        .parse()
        .map_err(|_| format!("\"{port}\" in \"{s}\" is not a port"))?;
    if port == 0 {
        return Err(format!("port 0 in \"{s}\" cannot be reached"));
    }
    let ok_host = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '_'));
    if !ok_host {
        return Err(format!(
            "\"{host}\" in \"{s}\" is not a host name or address"
        ));
    }
    Ok((host.to_string(), port))
}

pub(super) fn dependencies(
    ctx: &mut Ctx<'_>,
    raw: &[S<RawDependency>],
    services: &[Service],
    timing: &Timing,
) -> Vec<Dependency> {
    let mut out = Vec::new();
    let mut seen: HashMap<String, Range<usize>> = HashMap::new();
    // Outside services are probed once a second unless told otherwise.
    let outside = Timing {
        probe_interval: Duration::from_secs(1),
        ..*timing
    };
    for d in raw {
        let r = d.get_ref();
        let name = ctx.plain_name("dependency", &r.name);
        ctx.unique(&mut seen, "dependency", &name, r.name.span());
        if r.endpoints.is_empty() || r.endpoints.len() > MAX_ENDPOINTS {
            ctx.at(
                d.span(),
                format!(
                    "dependency \"{name}\" lists {} endpoints",
                    r.endpoints.len()
                ),
                format!("list from 1 to {MAX_ENDPOINTS} endpoints as \"host:port\", the preferred first"),
            );
        }
        let mut endpoints = Vec::new();
        for e in &r.endpoints {
            match split_endpoint(e.get_ref()) {
                Ok(_) if endpoints.contains(e.get_ref()) => ctx.at(
                    e.span(),
                    format!("endpoint {} is listed twice", e.get_ref()),
                    "list each endpoint once",
                ),
                Ok(_) => endpoints.push(e.get_ref().clone()),
                Err(why) => ctx.at(
                    e.span(),
                    format!("endpoint {why}"),
                    "write it as \"host:port\", like \"api.example.com:443\" or \"10.0.0.5:5432\"",
                ),
            }
        }
        let check = check(ctx, r.check.as_ref(), Protocol::Tcp, &outside, true);
        let mut used_by = Vec::new();
        for s in r.services.iter().flatten() {
            if services.iter().any(|x| &x.name == s.get_ref()) {
                used_by.push(s.get_ref().clone());
            } else {
                let names: Vec<&str> = services.iter().map(|x| x.name.as_str()).collect();
                ctx.at(
                    s.span(),
                    format!(
                        "dependency \"{name}\" names service \"{}\", which is not defined",
                        s.get_ref()
                    ),
                    format!(
                        "use one of: {}",
                        if names.is_empty() {
                            "(no services)".to_string()
                        } else {
                            names.join(", ")
                        }
                    ),
                );
            }
        }
        if let Some(p) = &r.egress_port {
            ctx.port("egress_port", p);
        }
        out.push(Dependency {
            name,
            endpoints,
            check,
            services: used_by,
            egress_port: r.egress_port.as_ref().map(|p| *p.get_ref()),
        });
    }
    out
}
