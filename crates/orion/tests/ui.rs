//! `orion ui` as a person meets it: the real binary in a real terminal (tmux), against a real
//! three-node cluster. Keys go in with `send-keys`, the screen comes back with
//! `capture-pane`.

mod common;

use common::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// A tmux session running one command; killed on drop.
struct Tmux {
    name: String,
}

impl Tmux {
    fn start(name: &str, cmd: &str) -> Tmux {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", name])
            .output();
        let ok = Command::new("tmux")
            .args([
                "new-session",
                "-d",
                "-s",
                name,
                "-x",
                "150",
                "-y",
                "40",
                cmd,
            ])
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux new-session failed");
        Tmux {
            name: name.to_string(),
        }
    }

    fn keys(&self, keys: &[&str]) {
        let ok = Command::new("tmux")
            .args(["send-keys", "-t", &self.name])
            .args(keys)
            .status()
            .expect("tmux")
            .success();
        assert!(ok, "tmux send-keys {keys:?} failed");
    }

    fn screen(&self) -> String {
        let out = Command::new("tmux")
            .args(["capture-pane", "-p", "-t", &self.name])
            .output()
            .expect("tmux");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    /// Waits until the screen satisfies `f`; returns the screen and how long it took.
    async fn wait_screen(
        &self,
        limit: Duration,
        what: &str,
        f: impl Fn(&str) -> bool,
    ) -> (String, Duration) {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if f(&s) {
                return (s, start.elapsed());
            }
            if start.elapsed() > limit {
                panic!("screen never showed {what} within {limit:?}; last screen:\n{s}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["kill-session", "-t", &self.name])
            .output();
    }
}

fn tmux_or_skip() -> bool {
    let ok = Command::new("tmux")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but tmux is missing (scripts/test.sh installs it)"
        );
        eprintln!("skipping: tmux is not installed");
    }
    ok
}

fn node_line<'a>(screen: &'a str, id: &str) -> Option<&'a str> {
    screen.lines().find(|l| l.contains(&format!("{id} ")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tui_in_tmux_switches_views_filters_follows_logs_deletes_and_sees_a_death() {
    if !tmux_or_skip() {
        return;
    }
    let Some(_docker) = docker_or_skip().await else {
        return;
    };
    let mut cluster = Cluster::start("tui-n", 40, 3, &[]);
    let a1 = cluster.agents[0].api.clone();
    cluster
        .wait_membership(&cluster.agents[0], 3, 0, Duration::from_secs(30))
        .await;
    let web = create_task(
        &a1,
        &format!(
            r#"{{"image": "{IMAGE}", "name": "tui-web", "command": ["sh", "-c", "echo hello-from-tui; sleep 3600"], "memory": "16m"}}"#
        ),
    )
    .await
    .expect("create");
    let other = create_task(&a1, &sleeper_body("tui-other"))
        .await
        .expect("create");
    wait_task_state(&a1, &web, "running", Duration::from_secs(30)).await;

    let ui = Tmux::start(
        "orion-tui-test",
        &format!("{} ui --addr {a1}", env!("CARGO_BIN_EXE_orion")),
    );
    // The nodes view first: all three alive.
    ui.wait_screen(Duration::from_secs(15), "three alive nodes", |s| {
        (1..=3).all(|i| node_line(s, &format!("tui-n{i}")).is_some_and(|l| l.contains("alive")))
    })
    .await;

    // `:tasks` switches view.
    ui.keys(&[":", "tasks", "Enter"]);
    ui.wait_screen(Duration::from_secs(10), "the tasks view", |s| {
        s.contains("[tasks]") && s.contains("tui-web") && s.contains("tui-other")
    })
    .await;

    // `/` filters.
    ui.keys(&["/", "tui-web", "Enter"]);
    ui.wait_screen(Duration::from_secs(5), "the filtered list", |s| {
        s.contains("tui-web") && !s.contains("tui-other")
    })
    .await;

    // `l` follows the selected task's logs; esc closes them.
    ui.keys(&["l"]);
    ui.wait_screen(Duration::from_secs(10), "the task's log line", |s| {
        s.contains("hello-from-tui")
    })
    .await;
    ui.keys(&["Escape"]);
    ui.wait_screen(Duration::from_secs(5), "the list again", |s| {
        s.contains("[tasks]") && !s.contains("esc to close")
    })
    .await;

    // ctrl-d asks, `y` deletes.
    ui.keys(&["C-d"]);
    ui.wait_screen(Duration::from_secs(5), "the confirmation", |s| {
        s.contains("(y/n)")
    })
    .await;
    ui.keys(&["y"]);
    wait_task_state(&a1, &web, "stopped", Duration::from_secs(10)).await;
    let _ = other;

    // Back to nodes; kill a node's agent: it turns dead on screen.
    ui.keys(&["Escape", ":", "nodes", "Enter"]);
    ui.wait_screen(Duration::from_secs(5), "the nodes view", |s| {
        s.contains("[nodes]")
    })
    .await;
    cluster.by_id_mut("tui-n3").kill();
    let killed = Instant::now();
    let (_, _) = ui
        .wait_screen(Duration::from_secs(15), "tui-n3 dead", |s| {
            node_line(s, "tui-n3").is_some_and(|l| l.contains("dead"))
        })
        .await;
    let took = killed.elapsed();
    println!("tui: a killed node showed dead on screen {took:?} after the kill");

    ui.keys(&["q"]);
}
