//! Progress of a long command, on stderr: on a terminal a bar with counts, rate and time left
//! (indicatif); elsewhere (a pipe, a log file, CI) a plain line every few seconds and one at
//! the end, so a log shows that the command advances. The command's summary stays on stdout.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// One step of a command (reading, replaying, exporting …) counted in `unit`s.
pub struct Progress {
    what: String,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    shown: Instant,
    bar: Option<ProgressBar>,
}

impl Progress {
    /// A bar on a terminal, plain lines otherwise. `total`, when known, gives the percentage
    /// and the time left.
    pub fn new(what: impl Into<String>, unit: &'static str, total: Option<u64>) -> Self {
        Self::with_terminal(what, unit, total, std::io::stderr().is_terminal())
    }

    fn with_terminal(
        what: impl Into<String>,
        unit: &'static str,
        total: Option<u64>,
        terminal: bool,
    ) -> Self {
        let what = what.into();
        let bar = terminal.then(|| {
            let bar = match total {
                Some(total) => ProgressBar::with_draw_target(
                    Some(total),
                    ProgressDrawTarget::stderr_with_hz(4),
                ),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr_with_hz(4)),
            };
            let template = if total.is_some() {
                "{msg} [{bar:30}] {human_pos}/{human_len} {unit} ({rate}, {eta} left)"
            } else {
                "{msg} {spinner} {human_pos} {unit} ({rate})"
            };
            let style = ProgressStyle::with_template(&template.replace("{unit}", unit))
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .with_key(
                    "rate",
                    |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                        let rate = state.per_sec();
                        let shown = if rate >= 10.0 {
                            format!("{rate:.0}/s")
                        } else {
                            format!("{rate:.2}/s")
                        };
                        w.write_str(&shown).ok();
                    },
                )
                .progress_chars("=> ");
            bar.set_style(style);
            bar.set_message(what.clone());
            bar
        });
        let now = Instant::now();
        Self {
            what,
            unit,
            total,
            done: 0,
            started: now,
            shown: now,
            bar,
        }
    }

    /// `n` more done.
    pub fn inc(&mut self, n: u64) {
        self.set(self.done + n);
    }

    /// `done` so far.
    pub fn set(&mut self, done: u64) {
        self.done = done;
        match &self.bar {
            Some(bar) => bar.set_position(done),
            None if self.shown.elapsed() >= PLAIN_EVERY => {
                self.shown = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    /// A line of its own (above the bar on a terminal).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some(bar) => bar.println(line),
            None => eprintln!("{line}"),
        }
    }

    /// The line a non-terminal shows: counts, rate and, with a total, time left.
    pub fn line(&self) -> String {
        let secs = self.started.elapsed().as_secs_f64();
        let rate = if secs > 0.0 {
            self.done as f64 / secs
        } else {
            0.0
        };
        let unit = self.unit;
        match self.total {
            Some(total) => {
                let left = total.saturating_sub(self.done);
                let eta = if rate > 0.0 && left > 0 {
                    format!(", about {} left", human(left as f64 / rate))
                } else {
                    String::new()
                };
                format!(
                    "{}: {}/{total} {unit} ({:.0}%), {rate:.0}/s{eta}",
                    self.what,
                    self.done,
                    100.0 * self.done as f64 / total.max(1) as f64
                )
            }
            None => format!("{}: {} {unit}, {rate:.0}/s", self.what, self.done),
        }
    }

    /// Ends the step: the bar is cleared, a plain line says what was done in how long.
    pub fn finish(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
        eprintln!(
            "{}: {} {} in {}",
            self.what,
            self.done,
            self.unit,
            human(self.started.elapsed().as_secs_f64())
        );
    }
}

impl Progress {
    /// Ends the step without a line (the caller says what was done its own way).
    pub fn clear(self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }

    /// What this step counts.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// `42 s`, `3 min 5 s`, `2 h 10 min`.
fn human(secs: f64) -> String {
    let secs = secs.max(0.0).round() as u64;
    match secs {
        s if s < 60 => format!("{s} s"),
        s if s < 3_600 => format!("{} min {} s", s / 60, s % 60),
        s => format!("{} h {} min", s / 3_600, (s % 3_600) / 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plain_line_gives_counts_share_rate_and_time_left() {
        let mut p = Progress::with_terminal("replaying", "dead letters", Some(200), false);
        p.started = Instant::now() - Duration::from_secs(10);
        p.done = 50;
        let line = p.line();
        assert!(
            line.starts_with("replaying: 50/200 dead letters (25%), 5/s"),
            "{line}"
        );
        assert!(line.ends_with("about 30 s left"), "{line}");
        p.total = None;
        assert_eq!(p.line(), "replaying: 50 dead letters, 5/s");
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(human(42.4), "42 s");
        assert_eq!(human(185.0), "3 min 5 s");
        assert_eq!(human(7_800.0), "2 h 10 min");
    }
}
