//! Start-up time: from `spawn` of the agent process until `GET /health` answers 200, each run on
//! a fresh data dir (a bootstrap: new CA, keys and stores), or with `--restart` each run a
//! restart of one node on its data dir (its certificate, secrets and stores on disk, as
//! issue 13's goal states it); the process is killed (SIGKILL) after each run.

use crate::{BoxError, Summary};
use clap::Args;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Debug, Args)]
pub struct StartupArgs {
    /// The orion binary
    #[arg(long)]
    bin: PathBuf,
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Address the agent binds (loopback)
    #[arg(long)]
    ip: IpAddr,
    #[arg(long, default_value_t = 8000)]
    port: u16,
    #[arg(long, default_value_t = 6000)]
    gossip_port: u16,
    #[arg(long, default_value_t = 7000)]
    raft_port: u16,
    /// Parent of the fresh data dirs
    #[arg(long)]
    dir: PathBuf,
    /// Time restarts of one bootstrapped node (started once, unmeasured, first) instead of
    /// fresh bootstraps
    #[arg(long)]
    restart: bool,
}

pub fn run(a: StartupArgs) -> Result<(), BoxError> {
    let addr = SocketAddr::new(a.ip, a.port);
    let mut samples = Vec::new();
    let restart_dir = a.dir.join("startup-restart");
    if a.restart {
        let _ = std::fs::remove_dir_all(&restart_dir);
    }
    // With --restart, run 0 is the unmeasured first start that bootstraps.
    let first = if a.restart { 0 } else { 1 };
    for run in first..=a.runs {
        let i = run.saturating_sub(1);
        let (data, id) = if a.restart {
            (restart_dir.clone(), "startup-restart".to_string())
        } else {
            (a.dir.join(format!("startup-{i}")), format!("startup{i}"))
        };
        if !a.restart {
            let _ = std::fs::remove_dir_all(&data);
        }
        let start = Instant::now();
        let mut child = Command::new(&a.bin)
            .args(["--id", &id, "--bootstrap"])
            .args(["--bind", &a.ip.to_string()])
            .args(["--publish-ip", &a.ip.to_string()])
            .args(["--port", &a.port.to_string()])
            .args(["--gossip-port", &a.gossip_port.to_string()])
            .args(["--raft-port", &a.raft_port.to_string()])
            .arg("--data-dir")
            .arg(&data)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let answered = loop {
            if health(addr) {
                break Some(start.elapsed());
            }
            if start.elapsed() > Duration::from_secs(10) {
                break None;
            }
            if let Some(status) = child.try_wait()? {
                return Err(format!("run {i}: the agent exited early: {status}").into());
            }
            std::thread::sleep(Duration::from_micros(100));
        };
        let _ = child.kill();
        let _ = child.wait();
        if !a.restart {
            let _ = std::fs::remove_dir_all(&data);
        }
        let Some(took) = answered else {
            return Err(format!("run {i}: /health did not answer within 10 s").into());
        };
        if a.restart && run == 0 {
            eprintln!(
                "startup: first start (bootstrap, not measured): {:.1} ms",
                took.as_secs_f64() * 1e3
            );
        } else {
            eprintln!("startup run {i}: {:.1} ms", took.as_secs_f64() * 1e3);
            samples.push(took);
        }
        // Let the kernel release the ports before the next start.
        std::thread::sleep(Duration::from_millis(50));
    }
    if a.restart {
        let _ = std::fs::remove_dir_all(&restart_dir);
    }
    let all: Vec<f64> = samples.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    println!(
        "{}",
        serde_json::json!({"startup": Summary::of(samples), "samples_ms": all})
    );
    Ok(())
}

/// True when `GET /health` on a fresh connection answers 200.
fn health(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_millis(500)));
    if s.write_all(b"GET /health HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 12 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"HTTP/1.1 200")
}
