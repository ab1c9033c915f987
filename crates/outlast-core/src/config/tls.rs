//! `[tls]` (how the peer port is encrypted) and the API's TLS files: checked, with paths
//! resolved against the config's folder. Certificate contents are checked by the agent
//! (and `outlast check`) through outlast-web's TLS room: this room knows files, not X.509.

use std::path::{Path, PathBuf};

use super::raw::*;
use super::validate::{resolve, Ctx};
use super::*;

/// How agents encrypt and authenticate peer traffic.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "kebab-case", tag = "mode")]
pub enum PeerTls {
    /// TLS 1.3 with certificates from a CA keyed from the cluster secret (no `[tls]`).
    #[default]
    Secret,
    /// TLS 1.3 with the operator's CA and one certificate per site.
    Certificates(SiteFiles),
    /// Clear text, signed with the cluster secret only: for measuring what TLS costs.
    Off,
}

/// PEM files; `{site}` in a path stands for the site's name.
#[derive(Debug, Clone, Serialize)]
pub struct SiteFiles {
    pub ca: Option<PathBuf>,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// `{site}` in `template` replaced by `site`.
pub fn for_site(template: &Path, site: &str) -> PathBuf {
    PathBuf::from(template.to_string_lossy().replace("{site}", site))
}

impl SiteFiles {
    /// This site's certificate and key.
    pub fn cert_for(&self, site: &str) -> (PathBuf, PathBuf) {
        (for_site(&self.cert, site), for_site(&self.key, site))
    }
}

fn path(ctx: &mut Ctx<'_>, base: &Path, v: &S<String>, field: &str) -> PathBuf {
    if v.get_ref().trim().is_empty() {
        ctx.at(
            v.span(),
            format!("{field} is empty"),
            "give the path of a PEM file",
        );
    }
    resolve(base, v.get_ref())
}

pub(super) fn peer_tls(ctx: &mut Ctx<'_>, raw: Option<&S<RawTls>>, base: &Path) -> PeerTls {
    let Some(raw) = raw else {
        return PeerTls::Secret;
    };
    let r = raw.get_ref();
    let files = (&r.ca, &r.cert, &r.key);
    let default = if matches!(files, (None, None, None)) {
        "secret"
    } else {
        "certificates"
    };
    let mode = match &r.peer {
        Some(p) => ctx.choice(
            "peer",
            Some(p),
            default,
            &[
                ("certificates", "certificates"),
                ("secret", "secret"),
                ("off", "off"),
            ],
        ),
        None => default,
    };
    match mode {
        "certificates" => {
            let (Some(ca), Some(cert), Some(key)) = files else {
                ctx.at(
                    raw.span(),
                    "peer = \"certificates\" needs ca, cert and key",
                    "add ca = \"tls/ca.pem\", cert = \"tls/{site}.pem\", key = \"tls/{site}.key\" \
                     (outlast certs writes them), or set peer = \"secret\"",
                );
                return PeerTls::Secret;
            };
            for v in [cert, key] {
                if !v.get_ref().contains("{site}") {
                    ctx.warn(
                        v.span(),
                        format!(
                            "\"{}\" has no {{site}}: every site reads the same file",
                            v.get_ref()
                        ),
                        "write {site} where the site's name goes, e.g. \"tls/{site}.pem\"",
                    );
                }
            }
            PeerTls::Certificates(SiteFiles {
                ca: Some(path(ctx, base, ca, "ca")),
                cert: path(ctx, base, cert, "cert"),
                key: path(ctx, base, key, "key"),
            })
        }
        "off" => {
            if let Some(p) = &r.peer {
                ctx.warn(
                    p.span(),
                    "peer traffic travels in clear (signed, not encrypted)",
                    "use this only to measure what TLS costs, on a network you own; remove it otherwise",
                );
            }
            PeerTls::Off
        }
        _ => {
            for v in [&r.ca, &r.cert, &r.key].into_iter().flatten() {
                ctx.warn(
                    v.span(),
                    "peer = \"secret\" does not read certificate files",
                    "remove it, or set peer = \"certificates\"",
                );
            }
            PeerTls::Secret
        }
    }
}

/// `[api] tls_cert` and `tls_key`: both or neither.
pub(super) fn api_tls(ctx: &mut Ctx<'_>, raw: &S<RawApi>, base: &Path) -> Option<SiteFiles> {
    let r = raw.get_ref();
    match (&r.tls_cert, &r.tls_key) {
        (Some(c), Some(k)) => Some(SiteFiles {
            ca: None,
            cert: path(ctx, base, c, "tls_cert"),
            key: path(ctx, base, k, "tls_key"),
        }),
        (Some(v), None) | (None, Some(v)) => {
            ctx.at(
                v.span(),
                "the API's TLS needs both tls_cert and tls_key",
                "add the other one (e.g. tls_cert = \"tls/{site}.pem\", tls_key = \"tls/{site}.key\")",
            );
            None
        }
        (None, None) => None,
    }
}
