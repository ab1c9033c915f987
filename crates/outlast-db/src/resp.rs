//! A small client of Redis's protocol (RESP2): commands as arrays of bulk strings, the
//! five reply types back. Enough for the agent to run its members (AUTH, INFO, REPLICAOF,
//! CONFIG SET, CLIENT PAUSE) and for drills and tests to write sessions; every read is
//! bounded in size and in time, so a server that hangs or talks nonsense gives an error.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// The largest bulk string read (Redis's own `proto-max-bulk-len` default).
const MAX_BULK: i64 = 512 << 20;
/// The most elements of an array read.
const MAX_ARRAY: i64 = 1 << 20;
/// How deep arrays may nest.
const MAX_DEPTH: usize = 8;
/// The longest status, error or number line.
const MAX_LINE: usize = 64 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    /// None: the null bulk string.
    Bulk(Option<Vec<u8>>),
    /// None: the null array.
    Array(Option<Vec<Reply>>),
}

impl Reply {
    /// The reply as text (a status or a bulk string).
    pub fn text(&self) -> Option<String> {
        match self {
            Reply::Simple(s) => Some(s.clone()),
            Reply::Bulk(Some(b)) => Some(String::from_utf8_lossy(b).into_owned()),
            _ => None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RespError {
    #[error("{addr}: {source}")]
    Io {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {0:?}", .after)]
    Timeout { addr: SocketAddr, after: Duration },
    #[error("{addr} answered: {msg}")]
    Server { addr: SocketAddr, msg: String },
    #[error("{addr} broke the protocol: {why}")]
    Protocol { addr: SocketAddr, why: String },
}

/// One connection to a Redis server.
pub struct Conn {
    addr: SocketAddr,
    stream: BufReader<TcpStream>,
    timeout: Duration,
}

impl Conn {
    /// Connects and, with a password, authenticates; every later command has `timeout`.
    pub async fn connect(
        addr: SocketAddr,
        password: Option<&str>,
        timeout: Duration,
    ) -> Result<Conn, RespError> {
        let tcp = tokio::time::timeout(timeout, TcpStream::connect(addr))
            .await
            .map_err(|_| RespError::Timeout {
                addr,
                after: timeout,
            })?
            .map_err(|source| RespError::Io { addr, source })?;
        let _ = tcp.set_nodelay(true);
        let mut c = Conn {
            addr,
            stream: BufReader::new(tcp),
            timeout,
        };
        if let Some(pw) = password {
            c.ok(&["AUTH", pw]).await?;
        }
        Ok(c)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sends one command; its reply (an error reply is `Err`).
    pub async fn cmd(&mut self, args: &[&str]) -> Result<Reply, RespError> {
        let addr = self.addr;
        let after = self.timeout;
        let reply = tokio::time::timeout(after, async {
            let mut out = format!("*{}\r\n", args.len()).into_bytes();
            for a in args {
                out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
                out.extend_from_slice(a.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            self.stream
                .get_mut()
                .write_all(&out)
                .await
                .map_err(|source| RespError::Io { addr, source })?;
            read_reply(&mut self.stream, addr, 0).await
        })
        .await
        .map_err(|_| RespError::Timeout { addr, after })??;
        match reply {
            Reply::Error(msg) => Err(RespError::Server { addr, msg }),
            r => Ok(r),
        }
    }

    /// A command that must answer a status (`+OK` and the like).
    pub async fn ok(&mut self, args: &[&str]) -> Result<(), RespError> {
        self.cmd(args).await.map(|_| ())
    }

    /// A command whose reply is text (INFO, GET); none for a null reply.
    pub async fn text(&mut self, args: &[&str]) -> Result<Option<String>, RespError> {
        Ok(self.cmd(args).await?.text())
    }
}

async fn read_line(r: &mut BufReader<TcpStream>, addr: SocketAddr) -> Result<String, RespError> {
    let mut buf = Vec::new();
    let n = (&mut *r)
        .take(MAX_LINE as u64)
        .read_until(b'\n', &mut buf)
        .await
        .map_err(|source| RespError::Io { addr, source })?;
    if n == 0 {
        return Err(RespError::Protocol {
            addr,
            why: "the connection closed".into(),
        });
    }
    if !buf.ends_with(b"\r\n") {
        return Err(RespError::Protocol {
            addr,
            why: "a line without CRLF, or longer than 64 KiB".into(),
        });
    }
    buf.truncate(buf.len() - 2);
    String::from_utf8(buf).map_err(|_| RespError::Protocol {
        addr,
        why: "a line that is not UTF-8".into(),
    })
}

fn number(addr: SocketAddr, s: &str) -> Result<i64, RespError> {
    s.parse().map_err(|_| RespError::Protocol {
        addr,
        why: format!("\"{s}\" is not a number"),
    })
}

fn read_reply<'a>(
    r: &'a mut BufReader<TcpStream>,
    addr: SocketAddr,
    depth: usize,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<Reply, RespError>> + Send + 'a>> {
    Box::pin(async move {
        let line = read_line(r, addr).await?;
        let (kind, rest) = line.split_at(line.len().min(1));
        match kind {
            "+" => Ok(Reply::Simple(rest.to_string())),
            "-" => Ok(Reply::Error(rest.to_string())),
            ":" => Ok(Reply::Int(number(addr, rest)?)),
            "$" => {
                let n = number(addr, rest)?;
                if n < 0 {
                    return Ok(Reply::Bulk(None));
                }
                if n > MAX_BULK {
                    return Err(RespError::Protocol {
                        addr,
                        why: format!("a bulk string of {n} bytes"),
                    });
                }
                let mut buf = vec![0; n as usize + 2];
                r.read_exact(&mut buf)
                    .await
                    .map_err(|source| RespError::Io { addr, source })?;
                if !buf.ends_with(b"\r\n") {
                    return Err(RespError::Protocol {
                        addr,
                        why: "a bulk string without CRLF".into(),
                    });
                }
                buf.truncate(n as usize);
                Ok(Reply::Bulk(Some(buf)))
            }
            "*" => {
                let n = number(addr, rest)?;
                if n < 0 {
                    return Ok(Reply::Array(None));
                }
                if n > MAX_ARRAY || depth >= MAX_DEPTH {
                    return Err(RespError::Protocol {
                        addr,
                        why: format!("an array of {n} at depth {depth}"),
                    });
                }
                let mut out = Vec::with_capacity(n.min(1024) as usize);
                for _ in 0..n {
                    out.push(read_reply(r, addr, depth + 1).await?);
                }
                Ok(Reply::Array(Some(out)))
            }
            _ => Err(RespError::Protocol {
                addr,
                why: format!("a reply starting {kind:?}"),
            }),
        }
    })
}

/// The `key:value` lines of an INFO section.
pub fn info_fields(text: &str) -> std::collections::BTreeMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.trim().split_once(':'))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A server that answers each command with the next canned bytes.
    async fn canned(answers: Vec<&'static [u8]>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        tokio::spawn(async move {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let mut buf = [0u8; 4096];
            for a in answers {
                if s.read(&mut buf).await.unwrap_or(0) == 0 {
                    return;
                }
                let _ = s.write_all(a).await;
            }
            let _ = s.read(&mut buf).await;
        });
        addr
    }

    #[tokio::test]
    async fn replies_of_every_type_are_read_and_nonsense_is_an_error() {
        let addr = canned(vec![
            b"+OK\r\n",
            b"$5\r\nhello\r\n",
            b"*2\r\n:7\r\n$-1\r\n",
            b"-ERR no\r\n",
            b"$999999999999\r\n",
        ])
        .await;
        let mut c = Conn::connect(addr, None, Duration::from_secs(2))
            .await
            .expect("connect");
        assert_eq!(
            c.cmd(&["PING"]).await.expect("ok"),
            Reply::Simple("OK".into())
        );
        assert_eq!(
            c.text(&["GET", "k"]).await.expect("bulk").as_deref(),
            Some("hello")
        );
        assert_eq!(
            c.cmd(&["X"]).await.expect("array"),
            Reply::Array(Some(vec![Reply::Int(7), Reply::Bulk(None)]))
        );
        assert!(matches!(c.cmd(&["X"]).await, Err(RespError::Server { .. })));
        assert!(matches!(
            c.cmd(&["X"]).await,
            Err(RespError::Protocol { .. })
        ));
    }

    #[tokio::test]
    async fn a_server_that_says_nothing_times_out() {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let held = tokio::spawn(async move { l.accept().await.map(|(s, _)| s) });
        let mut c = Conn::connect(addr, None, Duration::from_millis(200))
            .await
            .expect("connect");
        let t = outlast_core::clock::now();
        assert!(matches!(
            c.cmd(&["PING"]).await,
            Err(RespError::Timeout { .. })
        ));
        assert!(t.elapsed() < Duration::from_secs(2));
        drop(held);
    }

    #[test]
    fn info_is_read_by_field() {
        let f = info_fields("# Replication\r\nrole:master\r\nconnected_slaves:1\r\nslave0:ip=127.0.0.12,port=6379,state=online,offset=42,lag=0\r\n");
        assert_eq!(f["role"], "master");
        assert_eq!(
            f["slave0"],
            "ip=127.0.0.12,port=6379,state=online,offset=42,lag=0"
        );
    }
}
