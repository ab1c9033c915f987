//! Small socket helpers shared by the rooms that dial out from a site's address.

use std::net::{IpAddr, SocketAddr};

/// Where a socket that talks to a peer of `target_v4`'s family binds: this site's address
/// (any port) when the families agree, so a cut of the site's address cuts its traffic
/// too; the family's unspecified address otherwise.
pub fn local_for(source: IpAddr, target_v4: bool) -> SocketAddr {
    if source.is_ipv4() == target_v4 {
        SocketAddr::new(source, 0)
    } else if target_v4 {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    }
}
