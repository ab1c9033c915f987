//! What both kinds of server need of the machine: the pid of a server from its pid file,
//! a signal to it, its files given to the user it runs as, and its programs run as that user.

use std::path::Path;

/// The pid on the first line of `pid_file`, when that process is alive and its name
/// (`/proc/PID/comm`) is one `ours` accepts (a stale file's pid may belong to something
/// else by now).
pub fn running_pid(pid_file: &Path, ours: impl Fn(&str) -> bool) -> Option<u32> {
    let text = std::fs::read_to_string(pid_file).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    ours(comm.trim()).then_some(pid)
}

/// Sends `sig` (as `kill` takes it: "-TERM", "-KILL") to `pid`; Ok(false): no pid.
pub fn signal(pid: Option<u32>, sig: &str) -> std::io::Result<bool> {
    let Some(pid) = pid else {
        return Ok(false);
    };
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!("kill {sig} {pid} failed")));
    }
    Ok(true)
}

/// A command running `program` as `os_user` (through `runuser`) when one is given, else as
/// this process's user.
pub fn command_as(program: &Path, os_user: Option<&str>) -> tokio::process::Command {
    match os_user {
        Some(u) => {
            let mut c = tokio::process::Command::new("runuser");
            c.args(["-u", u, "--"]).arg(program);
            c
        }
        None => tokio::process::Command::new(program),
    }
}

/// Whether this process runs as root (and so can run servers as their own users).
pub fn is_root() -> bool {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0)
}

/// Gives `path` (recursively) to `user`; an error saying what failed.
pub async fn chown(user: &str, path: &Path) -> Result<(), String> {
    let status = tokio::process::Command::new("chown")
        .args(["-R", &format!("{user}:")])
        .arg(path)
        .status()
        .await
        .map_err(|e| format!("cannot run chown: {e}"))?;
    if !status.success() {
        return Err(format!("chown {user} {} failed", path.display()));
    }
    Ok(())
}

/// Lets `user`-less others pass through every parent of `dir` (`o+x`), so a server running
/// as its own user reaches a directory made by root.
pub async fn open_parents(dir: &Path) {
    let mut p = dir;
    loop {
        let _ = tokio::process::Command::new("chmod")
            .arg("o+x")
            .arg(p)
            .status()
            .await;
        match p.parent() {
            Some(up) if up != Path::new("/") && !up.as_os_str().is_empty() => p = up,
            _ => break,
        }
    }
}

/// A port nothing listens on at 127.0.0.1 now (a restored server is started on it).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
