//! Progress of a command that waits (`run --wait`, `service create`, `service update`): an
//! indicatif bar or spinner when stderr is a terminal, plain timestamped lines otherwise, so
//! scripts, CI logs and tests read one line per change.

use indicatif::{ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use std::time::{Duration, Instant};

pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    start: Instant,
    last: String,
}

impl Progress {
    /// A spinner with a message (no known total).
    pub(crate) fn spinner() -> Progress {
        Progress::new(None)
    }

    /// A bar towards `total`.
    pub(crate) fn bar(total: u64) -> Progress {
        Progress::new(Some(total))
    }

    fn new(total: Option<u64>) -> Progress {
        let bar = std::io::stderr().is_terminal().then(|| {
            let (bar, template) = match total {
                Some(t) => (
                    ProgressBar::new(t),
                    "{spinner} {elapsed:>4} [{bar:30}] {pos}/{len} {msg}",
                ),
                None => (ProgressBar::new_spinner(), "{spinner} {elapsed:>4} {msg}"),
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.enable_steady_tick(Duration::from_millis(120));
            bar
        });
        Progress {
            bar,
            start: Instant::now(),
            last: String::new(),
        }
    }

    /// Shows `line` (and the position towards the total, for a bar). Without a terminal, prints
    /// `line` once per change, with the seconds since the start.
    pub(crate) fn update(&mut self, pos: Option<(u64, u64)>, line: &str) {
        match &self.bar {
            Some(bar) => {
                if let Some((pos, total)) = pos {
                    bar.set_length(total);
                    bar.set_position(pos);
                }
                bar.set_message(line.to_string());
            }
            None => {
                if line != self.last {
                    eprintln!("{:>6.1}s  {line}", self.start.elapsed().as_secs_f64());
                }
            }
        }
        self.last = line.to_string();
    }

    /// Leaves the last state on screen.
    pub(crate) fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish();
        }
    }

    pub(crate) fn elapsed(&self) -> Duration {
        self.start.elapsed()
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(bar) = &self.bar
            && !bar.is_finished()
        {
            bar.abandon();
        }
    }
}
