//! outlast-dns: every site's authoritative DNS for `[dns].zone`, over UDP and TCP.
//!
//! Answers come from a [`ZoneView`] that the agent rebuilds from the committed routing on
//! every change: a primary-standby service's name points at its primary's site address, an
//! active-active one at every active site's. Every site answers the same within one probe
//! interval of a commit, and the SOA serial is the epoch. Before the first health round has
//! completed, every query in the zone gets SERVFAIL (no guess is better than a wrong one).
//! It never decides routing; it only publishes what was committed.

mod fast;
pub mod push;
pub mod steer;
mod view;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Header, HeaderCounts, MessageType, Metadata, ResponseCode};
use hickory_proto::rr::rdata::opt::EdnsOption;
use hickory_proto::rr::{LowerName, Record};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use hickory_server::Server;
use outlast_core::clock::LeaseClock;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use view::{Answer, ZoneView};

/// A name in canonical wire form: lower-case labels, uncompressed.
pub(crate) fn wire_name(name: &hickory_proto::rr::Name) -> Vec<u8> {
    let mut out = Vec::new();
    for label in name.to_lowercase().iter() {
        out.push(label.len() as u8);
        out.extend_from_slice(label);
    }
    out.push(0);
    out
}

/// Answers queries from the latest [`ZoneView`] while the site's lease holds.
pub struct Handler {
    view: watch::Receiver<Arc<ZoneView>>,
    lease: Arc<LeaseClock>,
}

impl Handler {
    pub fn new(view: watch::Receiver<Arc<ZoneView>>, lease: Arc<LeaseClock>) -> Self {
        Self { view, lease }
    }
}

fn failed(request: &Request, code: ResponseCode) -> ResponseInfo {
    let mut metadata = Metadata::new(
        request.metadata.id,
        MessageType::Response,
        request.metadata.op_code,
    );
    metadata.response_code = code;
    ResponseInfo::from(Header {
        metadata,
        counts: HeaderCounts::default(),
    })
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response: R,
    ) -> ResponseInfo {
        let ecs = steer::ecs_option(request.edns.as_ref());
        let client = steer::Client::of(ecs, Some(request.src().ip()))
            .unwrap_or_else(|| steer::Client::resolver(request.src().ip()));
        let edns = request.edns.as_ref().map(|e| {
            let mut out = Edns::new();
            out.set_max_payload(e.max_payload().max(512));
            out.set_version(0);
            out
        });
        let code_only = |code: ResponseCode| {
            MessageResponseBuilder::new(&request.queries, edns.as_ref())
                .error_msg(&request.metadata, code)
        };
        let refused = view::refusal(request.metadata.op_code, request.queries.queries().len());
        let outcome = if request.metadata.message_type != MessageType::Query {
            response
                .send_response(code_only(ResponseCode::FormErr))
                .await
        } else if let Some(code) = refused {
            response.send_response(code_only(code)).await
        } else {
            let q = &request.queries.queries()[0];
            let view = self.view.borrow().clone();
            let name: &LowerName = q.name();
            let owner = hickory_proto::rr::Name::from(name.clone());
            let (answer, pick) = if !self.lease.holds() && view.own.contains(&owner) {
                (
                    view.withheld()
                        .unwrap_or_else(|| (*view).clone())
                        .answer(name, q.query_type()),
                    None,
                )
            } else {
                view.answer_for(name, q.query_type(), Some(&client))
            };
            let mut answer_edns = edns.clone();
            if let (Some(e), Some(s)) = (answer_edns.as_mut(), ecs) {
                e.options_mut()
                    .insert(EdnsOption::Subnet(client.echo(s, pick.as_ref())));
            }
            metrics::counter!("outlast_dns_queries_total", "rcode" => answer.code.to_string())
                .increment(1);
            if !answer.authoritative() {
                response.send_response(code_only(answer.code)).await
            } else {
                let mut metadata = Metadata::response_from_request(&request.metadata);
                metadata.authoritative = true;
                metadata.recursion_available = false;
                metadata.response_code = answer.code;
                let built = MessageResponseBuilder::new(&request.queries, answer_edns.as_ref())
                    .build(
                        metadata,
                        answer.answers.iter(),
                        answer.authorities.iter(),
                        std::iter::empty::<&Record>(),
                        answer.additionals.iter(),
                    );
                response.send_response(built).await
            }
        };
        match outcome {
            Ok(info) => info,
            Err(e) => {
                tracing::debug!(error = %e, "DNS answer not sent");
                failed(request, ResponseCode::ServFail)
            }
        }
    }
}

/// Serves DNS on `addr` until `shutdown`: UDP through the compiled fast path (one reader
/// thread per core), TCP through hickory-server. Every answer is checked against `lease`
/// when it is made: a site whose lease ran out (a paused process that resumed, a site cut
/// off) stops naming itself as a primary from that moment, not from its next zone update,
/// since what it committed may be stale.
pub async fn serve(
    addr: SocketAddr,
    mut view: watch::Receiver<Arc<ZoneView>>,
    lease: Arc<LeaseClock>,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let published = Arc::new(fast::Published::new(fast::Compiled::new(
        view.borrow().clone(),
    )));
    // TCP first and without SO_REUSEPORT: a second server on this address fails here
    // instead of silently sharing the UDP port with the first.
    let tcp = tokio::net::TcpListener::bind(addr).await?;
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads = fast::serve_udp(addr, published.clone(), lease.clone(), stop.clone())?;
    let mut server = Server::new(Handler::new(view.clone(), lease));
    server.register_listener(tcp, Duration::from_secs(5), 64 * 1024);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            changed = view.changed() => {
                if changed.is_err() {
                    break;
                }
                published.publish(fast::Compiled::new(view.borrow_and_update().clone()));
            }
        }
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = tokio::task::spawn_blocking(move || {
        for t in threads {
            let _ = t.join();
        }
    })
    .await;
    if let Err(e) = server.shutdown_gracefully().await {
        tracing::warn!(error = %e, "DNS server did not stop cleanly");
    }
    Ok(())
}
