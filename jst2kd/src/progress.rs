//! Progress of a long command, on stderr: on a terminal a bar with counts, rate and time left
//! (indicatif); elsewhere (a pipe, a log file, CI) a plain line every few seconds and one at
//! the end, so a log shows that the command advances. The command's summary stays on stdout.

use std::io::IsTerminal as _;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// How often a plain line is written when stderr is not a terminal.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

/// The bar on screen, if any: log lines are written around it (see [`init_logging`]).
static SHOWN: Mutex<Option<(u64, ProgressBar)>> = Mutex::new(None);

/// Numbers the bars, to know which one is on screen.
static BARS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fn shown() -> std::sync::MutexGuard<'static, Option<(u64, ProgressBar)>> {
    SHOWN.lock().unwrap_or_else(|p| p.into_inner())
}

/// Starts the command's logging on stderr, written around the progress bar on screen so that
/// a warning never tears it (a line of its own above the bar).
pub fn init_logging(format: common::telemetry::LogFormat, default_filter: &str) {
    common::telemetry::init_logging_to(format, default_filter, || LogLine);
}

/// Stderr for the log: through the bar on screen, when there is one.
struct LogLine;

impl std::io::Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let bar = shown().as_ref().map(|(_, bar)| bar.clone());
        match bar {
            Some(bar) => bar
                .suspend(|| std::io::stderr().write_all(buf))
                .map(|()| buf.len()),
            None => std::io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// One step of a command (reading, replaying, exporting …) counted in `unit`s.
pub struct Progress {
    what: String,
    unit: &'static str,
    total: Option<u64>,
    done: u64,
    started: Instant,
    /// When the last plain line was written.
    last_line: Instant,
    /// On a terminal: the bar and its number.
    bar: Option<(u64, ProgressBar)>,
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
            let bar = ProgressBar::with_draw_target(total, ProgressDrawTarget::stderr_with_hz(4));
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
            let id = BARS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            *shown() = Some((id, bar.clone()));
            (id, bar)
        });
        let now = Instant::now();
        Self {
            what,
            unit,
            total,
            done: 0,
            started: now,
            last_line: now,
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
            Some((_, bar)) => bar.set_position(done),
            None if self.last_line.elapsed() >= PLAIN_EVERY => {
                self.last_line = Instant::now();
                eprintln!("{}", self.line());
            }
            None => {}
        }
    }

    /// Runs `f` (which writes to the terminal, e.g. a result line on stdout) with the bar
    /// off the screen.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        match &self.bar {
            Some((_, bar)) => bar.suspend(f),
            None => f(),
        }
    }

    /// A line of its own (above the bar on a terminal).
    pub fn println(&self, line: &str) {
        match &self.bar {
            Some((_, bar)) => bar.println(line),
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
    pub fn finish(mut self) {
        self.take_down();
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
    pub fn clear(mut self) {
        self.take_down();
    }

    /// The bar off the screen (and no longer the one log lines go around).
    fn take_down(&mut self) {
        if let Some((id, bar)) = self.bar.take() {
            bar.finish_and_clear();
            let mut shown = shown();
            if shown
                .as_ref()
                .is_some_and(|(on_screen, _)| *on_screen == id)
            {
                *shown = None;
            }
        }
    }

    /// What this step counts.
    pub fn what(&self) -> &str {
        &self.what
    }
}

/// A step that ends early (an error, `?`) takes its bar down too.
impl Drop for Progress {
    fn drop(&mut self) {
        self.take_down();
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
