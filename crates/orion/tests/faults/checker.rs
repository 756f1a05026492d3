//! The fault suite's view of Docker; the checker itself lives in `orion_sim::checker`, shared
//! with the simulator.

pub use orion_sim::checker::*;

/// Every container of this suite's nodes (`orion.node` starting with `prefix`).
pub fn list_containers(prefix: &str) -> Vec<ContainerRow> {
    let out = std::process::Command::new("docker")
        .args([
            "ps",
            "-a",
            "--no-trunc",
            "--filter",
            "label=orion.task",
            "--format",
            "{{.ID}}\t{{.State}}\t{{.Label \"orion.node\"}}\t{{.Label \"orion.task\"}}\t{{.Label \"orion.alloc\"}}",
        ])
        .output()
        .expect("docker ps");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            (f.len() == 5 && f[2].starts_with(prefix)).then(|| ContainerRow {
                id: f[0].chars().take(12).collect(),
                running: f[1] == "running",
                node: f[2].to_string(),
                task: f[3].to_string(),
                alloc: f[4].to_string(),
            })
        })
        .collect()
}
