//! The per-user credentials file (API.md "Security"): for each cluster this user bootstrapped
//! on this host, the admin token, the join token and the CA fingerprint, under the addresses
//! of its nodes (API and gossip, `host:port`). The CLI finds its token by `--addr`, a joining
//! node its join token by `--join`; a node that joins through an entry adds its own addresses
//! to it, so `orion --addr <any member>` works too.
//!
//! Many clusters run side by side on one host (tests do), so the file holds many entries; an
//! address belongs to one entry at most (a new bootstrap on an address takes it from the old
//! cluster, which can no longer be serving there). Every change takes an exclusive lock on
//! `<file>.lock`, reads, changes and writes the file atomically (mode 0600), so concurrent
//! bootstraps and joins do not lose each other's entries.
//!
//! Where: `$ORION_CREDENTIALS`, else `$XDG_CONFIG_HOME/orion/credentials.json`, else
//! `$HOME/.config/orion/credentials.json`.

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Entries kept: the oldest go first. A user bootstraps far fewer clusters than this on one
/// host that are still alive; test runs bootstrap hundreds, which this bounds.
pub const ENTRIES_MAX: usize = 256;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Entry {
    /// `host:port` of the cluster's nodes' API and gossip listeners on this host.
    pub addrs: Vec<String>,
    pub admin_token: String,
    pub join_token: String,
    /// `sha256:<hex>` of the CA certificate.
    pub ca_fingerprint: String,
    pub created_at: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct File {
    clusters: Vec<Entry>,
}

/// Where the file is, from the environment.
pub fn default_path() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("ORION_CREDENTIALS").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|p| !p.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("orion").join("credentials.json"))
}

/// `http://localhost:8000/` -> `127.0.0.1:8000`: the form addresses are kept and matched in.
pub fn normalize(addr: &str) -> String {
    let a = addr.trim();
    let a = a
        .strip_prefix("http://")
        .or_else(|| a.strip_prefix("https://"))
        .unwrap_or(a);
    let a = a.split('/').next().unwrap_or(a);
    match a.rsplit_once(':') {
        Some(("localhost" | "0.0.0.0", port)) => format!("127.0.0.1:{port}"),
        _ => a.to_string(),
    }
}

fn read(path: &Path) -> std::io::Result<File> {
    match std::fs::read(path) {
        // A damaged file is not fatal: the CLI then asks for --token, a bootstrap rewrites it.
        Ok(b) => Ok(serde_json::from_slice(&b).unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(e),
    }
}

/// Runs `change` on the file under its lock and writes the result.
fn update<T>(path: &Path, change: impl FnOnce(&mut File) -> T) -> std::io::Result<T> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
    }
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(path.with_extension("lock"))?;
    lock.lock()?;
    let mut file = read(path)?;
    let out = change(&mut file);
    if file.clusters.len() > ENTRIES_MAX {
        file.clusters
            .sort_by_key(|e| std::cmp::Reverse(e.created_at));
        file.clusters.truncate(ENTRIES_MAX);
    }
    let bytes = serde_json::to_vec_pretty(&file).expect("plain strings serialize");
    crate::material::write_private(path, &bytes)?;
    // The lock is released when `lock` is dropped.
    Ok(out)
}

/// A bootstrap node started: the new entry takes its addresses from any older one. A restart
/// of the same cluster keeps the addresses its joined nodes added.
pub fn record_bootstrap(path: &Path, mut entry: Entry) -> std::io::Result<()> {
    entry.addrs = entry.addrs.iter().map(|a| normalize(a)).collect();
    update(path, |f| {
        for e in &mut f.clusters {
            if e.join_token == entry.join_token {
                for a in &e.addrs {
                    if !entry.addrs.contains(a) {
                        entry.addrs.push(a.clone());
                    }
                }
                e.addrs.clear();
            } else {
                e.addrs.retain(|a| !entry.addrs.contains(a));
            }
        }
        f.clusters.retain(|e| !e.addrs.is_empty());
        f.clusters.push(entry);
    })
}

/// The cluster's CA rotated: the entries that held `old` join token hold `new` (which pins
/// the new CA, `ca_fingerprint`). Answers whether any entry changed.
pub fn replace_join_token(
    path: &Path,
    old: &str,
    new: &str,
    ca_fingerprint: &str,
) -> std::io::Result<bool> {
    update(path, |f| {
        let mut changed = false;
        for e in &mut f.clusters {
            if e.join_token == old {
                e.join_token = new.to_string();
                e.ca_fingerprint = ca_fingerprint.to_string();
                changed = true;
            }
        }
        changed
    })
}

/// A node joined the cluster of `join_token`: its addresses now lead to that entry.
pub fn add_addrs(path: &Path, join_token: &str, addrs: &[String]) -> std::io::Result<bool> {
    let addrs: Vec<String> = addrs.iter().map(|a| normalize(a)).collect();
    update(path, |f| {
        if !f.clusters.iter().any(|e| e.join_token == join_token) {
            return false;
        }
        for e in &mut f.clusters {
            if e.join_token == join_token {
                for a in &addrs {
                    if !e.addrs.contains(a) {
                        e.addrs.push(a.clone());
                    }
                }
            } else {
                e.addrs.retain(|a| !addrs.contains(a));
            }
        }
        f.clusters.retain(|e| !e.addrs.is_empty());
        true
    })
}

/// The entry that holds `addr` (any form `normalize` takes).
pub fn find(path: &Path, addr: &str) -> std::io::Result<Option<Entry>> {
    let addr = normalize(addr);
    Ok(read(path)?
        .clusters
        .into_iter()
        .find(|e| e.addrs.contains(&addr)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(addrs: &[&str], n: u64) -> Entry {
        Entry {
            addrs: addrs.iter().map(|s| s.to_string()).collect(),
            admin_token: format!("admin{n}"),
            join_token: format!("join{n}"),
            ca_fingerprint: "sha256:00".into(),
            created_at: n,
        }
    }

    #[test]
    fn clusters_side_by_side_are_found_by_any_of_their_addresses() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/credentials.json");
        record_bootstrap(&path, entry(&["127.0.0.1:8000", "127.0.0.1:6000"], 1)).unwrap();
        record_bootstrap(&path, entry(&["127.0.9.1:8000", "127.0.9.1:6000"], 2)).unwrap();
        assert!(add_addrs(&path, "join1", &["127.0.0.1:8001".into()]).unwrap());
        assert!(!add_addrs(&path, "nope", &["127.0.0.1:8002".into()]).unwrap());
        let find_token = |a: &str| find(&path, a).unwrap().map(|e| e.admin_token);
        assert_eq!(
            find_token("http://localhost:8000").as_deref(),
            Some("admin1")
        );
        assert_eq!(
            find_token("http://127.0.0.1:8001/").as_deref(),
            Some("admin1")
        );
        assert_eq!(find_token("127.0.9.1:6000").as_deref(), Some("admin2"));
        assert_eq!(find_token("127.0.0.1:8002"), None);
        // A restart of the bootstrap node keeps the joined node's address.
        record_bootstrap(&path, entry(&["127.0.0.1:8000", "127.0.0.1:6000"], 1)).unwrap();
        assert_eq!(find_token("127.0.0.1:8001").as_deref(), Some("admin1"));
        // A new cluster on the old addresses takes them over.
        record_bootstrap(&path, entry(&["127.0.0.1:8000", "127.0.0.1:6000"], 3)).unwrap();
        assert_eq!(find_token("127.0.0.1:8000").as_deref(), Some("admin3"));
        assert_eq!(find_token("127.0.0.1:8001").as_deref(), Some("admin1"));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn concurrent_bootstraps_lose_no_entry() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials.json");
        let handles: Vec<_> = (0..16u64)
            .map(|i| {
                let path = path.clone();
                std::thread::spawn(move || {
                    let a = format!("127.0.{i}.1:8000");
                    record_bootstrap(&path, entry(&[&a], i)).unwrap();
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        for i in 0..16 {
            assert!(find(&path, &format!("127.0.{i}.1:8000")).unwrap().is_some());
        }
    }
}
