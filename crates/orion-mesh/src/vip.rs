//! Holding the service VIPs on this host, so the kernel delivers their packets to the
//! mesh's listeners. The set to hold is `plan::vips` (pure); this module does the IO, with
//! iproute2's `ip` (each call takes a few milliseconds and happens only when a service with a
//! VIP comes or goes; never at start-up).

use std::io;
use std::net::Ipv4Addr;
use std::process::Command;

/// Adds and removes host addresses. A trait so the mesh's tests (which run without
/// CAP_NET_ADMIN on loopback addresses that are already local) need not touch the host.
pub trait VipAddresses: Send + 'static {
    fn add(&mut self, ip: Ipv4Addr) -> io::Result<()>;
    fn remove(&mut self, ip: Ipv4Addr) -> io::Result<()>;
}

/// The production table: `ip addr replace VIP/32 dev IFACE`. The interface is a dummy one
/// (`orion0`, as kube-proxy's IPVS mode uses `kube-ipvs0`) when the kernel can make one, else
/// the loopback interface (hosts and containers without the `dummy` module); either way the
/// /32 makes the address local to the host and to nothing else.
///
/// The interface is chosen at the first VIP, not at construction: finding or making it runs
/// `ip` up to four times (about 3 ms each), which the agent's start-up should not wait for.
pub struct IpCommand {
    interface: Option<String>,
}

/// The dummy interface's name.
pub const DUMMY_INTERFACE: &str = "orion0";

impl IpCommand {
    pub fn new() -> IpCommand {
        IpCommand { interface: None }
    }

    /// Makes (or finds) the dummy interface, once; falls back to `lo`.
    pub fn interface(&mut self) -> &str {
        self.interface.get_or_insert_with(Self::choose)
    }

    fn choose() -> String {
        let exists = run(&["link", "show", DUMMY_INTERFACE]).is_ok();
        let made = exists
            || run(&["link", "add", DUMMY_INTERFACE, "type", "dummy"]).is_ok()
            || run(&["link", "show", DUMMY_INTERFACE]).is_ok();
        let interface = if made && run(&["link", "set", DUMMY_INTERFACE, "up"]).is_ok() {
            DUMMY_INTERFACE
        } else {
            "lo"
        };
        tracing::info!(interface, "service VIPs are held on this interface");
        interface.to_string()
    }
}

impl Default for IpCommand {
    fn default() -> Self {
        IpCommand::new()
    }
}

impl VipAddresses for IpCommand {
    fn add(&mut self, ip: Ipv4Addr) -> io::Result<()> {
        let dev = self.interface().to_string();
        run(&["addr", "replace", &format!("{ip}/32"), "dev", &dev])
    }
    fn remove(&mut self, ip: Ipv4Addr) -> io::Result<()> {
        let dev = self.interface().to_string();
        run(&["addr", "del", &format!("{ip}/32"), "dev", &dev])
    }
}

/// Addresses that are local already (loopback in tests): nothing to do.
pub struct NoAddresses;

impl VipAddresses for NoAddresses {
    fn add(&mut self, _: Ipv4Addr) -> io::Result<()> {
        Ok(())
    }
    fn remove(&mut self, _: Ipv4Addr) -> io::Result<()> {
        Ok(())
    }
}

fn run(args: &[&str]) -> io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if out.status.success() {
        Ok(())
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            err.trim()
        )))
    }
}
