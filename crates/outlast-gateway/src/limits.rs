//! Limits every listener of an agent keeps, so that no client can hold a site's doors:
//! a cap on open connections per listener (over it, a connection is answered at once and
//! closed), a deadline for a request's head (and for the next one on an idle keep-alive
//! connection), and a record of failed accepts (a listener that cannot accept, out of file
//! descriptors say, makes its site report the service unhealthy so that the others take
//! over).
//!
//! Found by probing: idle connections, partial headers and short bodies were held for
//! minutes; under a 1,024 file limit, 1,100 idle connections made a site's API and gateway
//! time out for as long as they were held while its peers still counted it up.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How long a client has to send a request's head, and how long a keep-alive connection
/// may sit idle before the next one.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a request body may go without a byte.
pub const BODY_IDLE_TIMEOUT: Duration = Duration::from_secs(10);

/// The open connections of one listener.
#[derive(Debug)]
pub struct ConnLimit {
    name: String,
    max: usize,
    open: Arc<Semaphore>,
    refused: AtomicU64,
    /// When an accept last failed (ms since `born`; 0: never).
    accept_failed_ms: AtomicU64,
    born: Instant,
}

impl ConnLimit {
    pub fn new(name: impl Into<String>, max: usize) -> Arc<Self> {
        let max = max.max(1);
        Arc::new(Self {
            name: name.into(),
            max,
            open: Arc::new(Semaphore::new(max)),
            refused: AtomicU64::new(0),
            accept_failed_ms: AtomicU64::new(0),
            born: outlast_core::clock::now(),
        })
    }

    /// A place for one more connection, held while it is open; none when the listener is
    /// at its cap (the connection is then refused and counted).
    pub fn admit(&self) -> Option<OwnedSemaphorePermit> {
        match self.open.clone().try_acquire_owned() {
            Ok(p) => Some(p),
            Err(_) => {
                self.refused.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("outlast_connections_refused_total", "listener" => self.name.clone())
                    .increment(1);
                None
            }
        }
    }

    pub fn max(&self) -> usize {
        self.max
    }

    pub fn open(&self) -> usize {
        self.max - self.open.available_permits()
    }

    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// Notes that an accept failed.
    pub fn accept_failed(&self) {
        let ms = self.born.elapsed().as_millis() as u64;
        self.accept_failed_ms.store(ms.max(1), Ordering::Relaxed);
        metrics::counter!("outlast_accept_errors_total", "listener" => self.name.clone())
            .increment(1);
    }

    /// Whether an accept failed within `window`: the listener cannot take new clients.
    pub fn failing_within(&self, window: Duration) -> bool {
        let at = self.accept_failed_ms.load(Ordering::Relaxed);
        at > 0
            && (self.born.elapsed().as_millis() as u64).saturating_sub(at)
                <= window.as_millis() as u64
    }
}

/// Answers an HTTP client that is over a listener's cap: 503 with `Retry-After`, then
/// closes. Bounded: a client that does not read gets a second, then the socket closes.
pub async fn refuse_http(mut stream: TcpStream, why: &'static str) {
    let body = format!("{why}; retry shortly\n");
    let answer = format!(
        "HTTP/1.1 503 Service Unavailable\r\nretry-after: 1\r\ncontent-type: text/plain\r\n\
         content-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        let _ = stream.write_all(answer.as_bytes()).await;
        let _ = stream.shutdown().await;
    })
    .await;
}

/// A request body that fails when no byte comes for `idle` (a client that announces a
/// body and stalls holds nothing for long).
pub struct IdleBody<B> {
    inner: B,
    idle: Duration,
    deadline: Pin<Box<tokio::time::Sleep>>,
}

impl<B> IdleBody<B> {
    pub fn new(inner: B, idle: Duration) -> Self {
        Self {
            inner,
            idle,
            deadline: Box::pin(tokio::time::sleep(idle)),
        }
    }
}

/// Why a request body ended early.
#[derive(Debug, thiserror::Error)]
#[error("the request body went {0:?} without a byte")]
pub struct BodyStalled(pub Duration);

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl<B> http_body::Body for IdleBody<B>
where
    B: http_body::Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                let next = tokio::time::Instant::now() + this.idle;
                this.deadline.as_mut().reset(next);
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => match this.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Some(Err(Box::new(BodyStalled(this.idle))))),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// The `Content-Length` a request announces, when it says one.
pub fn content_length(headers: &hyper::HeaderMap) -> Option<u64> {
    headers
        .get(hyper::header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_takes_up_to_its_cap_then_refuses_and_counts() {
        let l = ConnLimit::new("api", 2);
        let a = l.admit().expect("first");
        let _b = l.admit().expect("second");
        assert!(l.admit().is_none());
        assert_eq!((l.open(), l.refused()), (2, 1));
        drop(a);
        assert!(l.admit().is_some(), "a place freed is taken again");
        assert!(!l.failing_within(Duration::from_secs(1)));
        l.accept_failed();
        assert!(l.failing_within(Duration::from_secs(1)));
    }
}
