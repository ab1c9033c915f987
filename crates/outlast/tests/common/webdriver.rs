#![allow(dead_code)]

//! A W3C WebDriver client for Debian's `chromedriver` (package chromium-driver) driving
//! headless Chromium: plain HTTP/1.1 over loopback, JSON in and out. Each browser is
//! stopped by its chromedriver's pid on drop.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use serde_json::{json, Value};

pub struct Browser {
    driver: Child,
    addr: SocketAddr,
    session: String,
}

fn call(addr: SocketAddr, method: &str, path: &str, body: Option<&Value>) -> Option<Value> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    // chromedriver may keep the connection open: read the head, then Content-Length bytes.
    let mut out = Vec::new();
    let mut buf = [0u8; 65536];
    let head_end = loop {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            return None;
        }
        out.extend_from_slice(&buf[..n]);
        if let Some(i) = out.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
    };
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())?;
    while out.len() < head_end + len {
        let n = s.read(&mut buf).ok()?;
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    serde_json::from_slice(&out[head_end..]).ok()
}

impl Browser {
    /// Starts chromedriver on `port` and a headless Chromium session (JavaScript on or
    /// off); none when chromedriver is not installed.
    pub fn start(port: u16, javascript: bool) -> Option<Browser> {
        let driver_bin = ["/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists())?;
        let driver = Command::new(driver_bin)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(10) {
            if call(addr, "GET", "/status", None).is_some_and(|v| v["value"]["ready"] == true) {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut b = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let mut prefs = json!({});
        if !javascript {
            prefs = json!({"profile.managed_default_content_settings.javascript": 2});
        }
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                     "--window-size=1000,1500", "--disable-dev-shm-usage"],
            "prefs": prefs,
        }}}});
        let v = call(addr, "POST", "/session", Some(&caps))?;
        b.session = v["value"]["sessionId"].as_str()?.to_string();
        Some(b)
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    pub fn goto(&self, url: &str) {
        call(
            self.addr,
            "POST",
            &self.at("/url"),
            Some(&json!({ "url": url })),
        );
    }

    /// The visible text of the first element matching `css` (empty when none).
    pub fn text(&self, css: &str) -> String {
        let Some(v) = call(
            self.addr,
            "POST",
            &self.at("/element"),
            Some(&json!({"using": "css selector", "value": css})),
        ) else {
            return String::new();
        };
        let Some(id) = v["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(|x| x.as_str())
        else {
            return String::new();
        };
        call(
            self.addr,
            "GET",
            &self.at(&format!("/element/{id}/text")),
            None,
        )
        .and_then(|v| v["value"].as_str().map(str::to_string))
        .unwrap_or_default()
    }

    /// Runs a script in the page: its result (fails with JavaScript off).
    pub fn script(&self, js: &str) -> Value {
        call(
            self.addr,
            "POST",
            &self.at("/execute/sync"),
            Some(&json!({"script": js, "args": []})),
        )
        .map(|v| v["value"].clone())
        .unwrap_or(Value::Null)
    }

    /// A screenshot of the viewport into `path`; its size in bytes.
    pub fn screenshot(&self, path: &std::path::Path) -> u64 {
        let png = call(self.addr, "GET", &self.at("/screenshot"), None)
            .and_then(|v| v["value"].as_str().map(str::to_string))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .unwrap_or_default();
        let _ = std::fs::write(path, &png);
        png.len() as u64
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            call(
                self.addr,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            );
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}
