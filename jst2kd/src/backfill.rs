//! `jst2kd backfill --from T --to T`: publishes the documents of a past period, in windows of
//! at most 7 days, without touching the producer's checkpoint.
//!
//! One quota for every caller: the request goes on the control queue, and whoever holds the
//! producer lock fetches it, window by window, with its own pacer and token
//! (`producer::control`). While a producer runs, that is the producer, between its polls;
//! when none runs, this command takes the lock itself and serves its own request, so a
//! producer starting meanwhile waits until it is done. Either way this command shows the
//! progress and the summary. Documents already loaded come through as duplicates.

use std::io::IsTerminal;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, FixedOffset};
use clap::Args;
use common::config::{ConfigError, FromLayers};
use common::queue::rabbit::{ControlClient, LockError, ProducerLock};
use common::queue::{Role, Topology};
use common::telemetry::Stage;
use common::time::{format_beijing, parse_beijing};
use common::worker::{self, Context, WorkerArgs};
use producer::control::{BackfillRequest, Deliver, Event, Progress};
use producer::{LOCK_RETRY, MAX_WINDOW, Producer, windows};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

#[derive(Args)]
pub struct BackfillArgs {
    #[command(flatten)]
    worker: WorkerArgs,
    /// Start of the period (Beijing `yyyy-MM-dd HH:mm:ss`, or RFC 3339).
    #[arg(long)]
    from: String,
    /// End of the period.
    #[arg(long)]
    to: String,
}

/// How long the command waits for a word from the lock holder before it looks at the lock
/// again, once the request was taken (a window of many pages takes minutes).
const TAKEN_PATIENCE: Duration = Duration::from_secs(30);

/// How long taking the lock may take.
const LOCK_TIMEOUT: Duration = Duration::from_secs(15);

pub async fn run(args: BackfillArgs) -> anyhow::Result<()> {
    let (process, layers) = worker::load_config(&args.worker)?;
    let config = producer::Config::from_layers(&layers)?;
    let terminal = start_logging(process.runtime.log_format);
    let time = |key: &str, text: &str| {
        parse_beijing(text).ok_or_else(|| {
            ConfigError(format!(
                "--{key} must be a time such as \"2026-03-01 00:00:00\" (Beijing)"
            ))
        })
    };
    let (from, to) = (time("from", &args.from)?, time("to", &args.to)?);
    if to <= from {
        return Err(ConfigError("--to must be after --from".into()).into());
    }
    let ctx = Context::new(&[Stage::Producer]);
    worker::spawn_signal_handler(ctx.cancel.clone(), ctx.health.clone());
    let mut view = View::new("backfill", terminal, windows(from, to, MAX_WINDOW).len());
    let outcome = ask_holder(
        &config,
        &ctx,
        (from, to),
        Deliver::Publish,
        &mut view,
        |_| {},
    )
    .await;
    ctx.cancel.cancel();
    let progress = outcome?;
    println!(
        "backfill {} – {} (statuses {})",
        format_beijing(&from),
        format_beijing(&to),
        progress.statuses.join(", ")
    );
    println!("fetched by: {}", progress.by);
    println!("windows: {}", progress.windows);
    println!("documents fetched: {}", progress.fetched);
    println!("documents published: {}", progress.published);
    println!("elapsed: {:.1} s", view.started.elapsed().as_secs_f64());
    Ok(())
}

/// Starts logging for a command that shows progress: on a terminal the progress lines say
/// what happens and the log keeps to warnings; elsewhere the progress goes to the log. True on
/// a terminal.
pub fn start_logging(format: common::telemetry::LogFormat) -> bool {
    let terminal = std::io::stderr().is_terminal();
    crate::progress::init_logging(
        format,
        if terminal {
            "warn,lapin=warn,lapin::channel=off"
        } else {
            common::telemetry::DEFAULT_FILTER
        },
    );
    terminal
}

/// Asks the holder of the producer lock to fetch `[from, to]` window by window, delivering
/// the documents as `deliver` says (replied ones go to `on_documents`), and shows the
/// progress; serves the request itself when no one holds the lock. Returns the last reply.
///
/// Configuration problems come back as [`ConfigError`] (exit 2) before anything is asked.
pub async fn ask_holder(
    config: &producer::Config,
    ctx: &Context,
    (from, to): (DateTime<FixedOffset>, DateTime<FixedOffset>),
    deliver: Deliver,
    view: &mut View,
    mut on_documents: impl FnMut(Vec<serde_json::Value>),
) -> anyhow::Result<Progress> {
    // Built when this command ends up holding the lock; built once now so that a
    // configuration problem shows before anything is asked (exit 2).
    producer::client(config, ctx.metrics.clone()).map_err(|e| ConfigError(e.to_string()))?;
    // It stands in for the producer (and runs in the producer's pod or container, with the
    // producer's RabbitMQ user): it declares what the producer declares.
    let topology = Topology::from_config(&config.amqp).for_role(Role::Producer);
    let name = format!("jst2kd-{}-{}", view.command, std::process::id());
    let mut control = ControlClient::connect(&config.amqp.url, &name, &topology)
        .await
        .map_err(|e| anyhow::anyhow!("RabbitMQ: {e}"))?;
    let mut request = BackfillRequest::new(control.reply_queue(), &from, &to);
    request.deliver = deliver;
    control.request(&request.message()).await?;
    info!(request = %request.id, from = %request.from, to = %request.to, "Request put on the control queue.");

    let lock_name = format!("{name}-lock");
    let mut serving: Option<SelfServe> = None;
    let mut heard = false;
    let mut next_try = tokio::time::Instant::now();
    let outcome = loop {
        tokio::select! {
            () = ctx.cancel.cancelled() => break Err(view.interrupted(serving.is_some())),
            reply = control.next_reply() => {
                let Some(body) = reply else {
                    break Err(anyhow::anyhow!(
                        "lost the connection to RabbitMQ; the lock holder stops after the window in progress ({})",
                        view.so_far()
                    ));
                };
                let mut progress: Progress = match serde_json::from_slice(&body) {
                    Ok(p) => p,
                    Err(e) => {
                        warn!(error = %e, "Unreadable reply on the reply queue; ignored.");
                        continue;
                    }
                };
                if progress.id != request.id {
                    continue;
                }
                heard = true;
                next_try = tokio::time::Instant::now() + TAKEN_PATIENCE;
                if deliver == Deliver::Reply && progress.deliver != Some(Deliver::Reply) {
                    break Err(anyhow::anyhow!(
                        "{} runs an older jst2kd, which would publish the documents instead of sending them back: upgrade it first (it stops after the window in progress, whose documents reach the pipeline again, harmlessly)",
                        progress.by
                    ));
                }
                if progress.event == Event::Documents {
                    on_documents(std::mem::take(&mut progress.documents));
                    continue;
                }
                match view.show(&progress) {
                    Some(Event::Finished) => break Ok(progress),
                    Some(Event::Failed) => break Err(view.failure(&progress)),
                    _ => {}
                }
            }
            () = tokio::time::sleep_until(next_try) => {
                if serving.as_ref().is_some_and(|s| !s.is_over()) {
                    next_try = tokio::time::Instant::now() + LOCK_RETRY;
                    continue;
                }
                // Nobody answered yet (or not for a while), or this command lost the lock it
                // served with: if no one holds the lock, no producer runs to serve the
                // request, and this command serves it itself.
                next_try = tokio::time::Instant::now() + if heard { TAKEN_PATIENCE } else { LOCK_RETRY };
                let acquire = ProducerLock::acquire(&config.amqp.url, &lock_name, &topology);
                let lock = tokio::select! {
                    () = ctx.cancel.cancelled() => continue,
                    r = tokio::time::timeout(LOCK_TIMEOUT, acquire) => r,
                };
                match lock {
                    Ok(Ok(lock)) => {
                        view.serving_itself();
                        let started = tokio::select! {
                            () = ctx.cancel.cancelled() => continue,
                            r = SelfServe::start(lock, config, ctx, view.command) => r,
                        };
                        match started {
                            Ok(s) => serving = Some(s),
                            Err(e) => warn!(error = %e, "Cannot serve the request with the lock; trying again."),
                        }
                    }
                    Ok(Err(LockError::Held)) => view.waiting(),
                    Ok(Err(LockError::Unavailable(e))) => warn!(error = %e, "Cannot reach RabbitMQ for the producer lock; trying again."),
                    Err(_) => warn!("RabbitMQ did not answer for the producer lock; trying again."),
                }
            }
        }
    };
    if let Some(serving) = serving {
        serving.stop().await;
    }
    control.close().await;
    outcome
}

/// This command holding the lock and serving the control queue (its own request first in
/// line, or after those queued before it).
struct SelfServe {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl SelfServe {
    async fn start(
        lock: ProducerLock,
        config: &producer::Config,
        ctx: &Context,
        command: &'static str,
    ) -> anyhow::Result<Self> {
        let client = producer::client(config, ctx.metrics.clone())?;
        let server = lock
            .control(Topology::from_config(&config.amqp).control_queue())
            .await?;
        let broker = worker::connect_rabbit(
            &config.amqp,
            &format!("jst2kd-{command}"),
            Role::Producer,
            ctx,
        )
        .await?;
        let producer = Arc::new(Producer::new(
            client,
            broker.clone(),
            config.producer.clone(),
            ctx.metrics.clone(),
        ));
        let cancel = ctx.cancel.child_token();
        let stop = cancel.clone();
        let metrics = ctx.metrics.clone();
        let task = tokio::spawn(async move {
            let by = format!(
                "jst2kd {command} (pid {}; no producer was running)",
                std::process::id()
            );
            tokio::select! {
                () = producer.serve(&server, &stop, &by) => {}
                () = lock.lost() => warn!("The producer lock's connection dropped; this command waits for the lock again."),
            }
            lock.release().await;
            metrics.outcomes.close().await;
            broker.close().await;
        });
        Ok(Self { cancel, task })
    }

    /// The lock was lost and the serving stopped.
    fn is_over(&self) -> bool {
        self.task.is_finished()
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.task.await.ok();
    }
}

/// What the command shows: progress lines on a terminal, log lines otherwise.
pub struct View {
    /// `backfill` or `reconcile`.
    command: &'static str,
    terminal: bool,
    windows: usize,
    started: Instant,
    /// When the current holder took the request, and how many windows were done then.
    taken: Option<(Instant, usize)>,
    last: Option<Progress>,
    waiting_shown: bool,
    /// On a terminal, once a holder took the request: windows done, rate and time left.
    bar: Option<crate::progress::Progress>,
}

impl View {
    /// For `command`, asking for `windows` windows.
    pub fn new(command: &'static str, terminal: bool, windows: usize) -> Self {
        Self {
            command,
            terminal,
            windows,
            started: Instant::now(),
            taken: None,
            last: None,
            waiting_shown: false,
            bar: None,
        }
    }

    fn say(&self, line: &str) {
        match (&self.bar, self.terminal) {
            (Some(bar), _) => bar.println(&format!("  {line}")),
            (None, true) => eprintln!("  {line}"),
            (None, false) => info!("{line}"),
        }
    }

    /// Ends the bar, if one is shown.
    fn finish_bar(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish();
        }
    }

    fn waiting(&mut self) {
        if !std::mem::replace(&mut self.waiting_shown, true) {
            self.say(&format!(
                "{} windows requested; the producer lock is held (by the running producer, which fetches them between its polls, or by a check or backfill that is about to finish)",
                self.windows
            ));
        }
    }

    fn serving_itself(&mut self) {
        self.say(
            "no producer is running: this command takes the lock and fetches the windows itself",
        );
    }

    /// Shows a reply; returns its event when it is news.
    fn show(&mut self, progress: &Progress) -> Option<Event> {
        let event = progress.event;
        match event {
            Event::Accepted => {
                self.taken = Some((Instant::now(), progress.done));
                if self.terminal && self.bar.is_none() {
                    let mut bar = crate::progress::Progress::new(
                        self.command,
                        "windows",
                        Some(progress.windows as u64),
                    );
                    bar.set(progress.done as u64);
                    self.bar = Some(bar);
                }
                if progress.restarted {
                    self.say(&format!(
                        "{} took the request again: window {} of {} is fetched again",
                        progress.by,
                        progress.done + 1,
                        progress.windows
                    ));
                } else {
                    self.say(&format!(
                        "{} took the request: {} windows",
                        progress.by, progress.windows
                    ));
                }
            }
            Event::Window | Event::Finished => {
                // Two copies of one request after a holder stopped between putting the
                // progress back and acking: show each window once.
                if self.last.as_ref().is_some_and(|l| l.done >= progress.done) {
                    return None;
                }
                let (since, done_then) = *self.taken.get_or_insert((self.started, 0));
                let done_here = progress.done.saturating_sub(done_then).max(1);
                let per_window = since.elapsed().as_secs_f64() / done_here as f64;
                let left = per_window * progress.windows.saturating_sub(progress.done) as f64;
                if let Some((begin, end, published)) = &progress.window {
                    self.say(&format!(
                        "window {}/{}: {begin} – {end}: {published} documents ({} in all), about {left:.0} s left",
                        progress.done, progress.windows, progress.published
                    ));
                }
                self.last = Some(progress.clone());
                if let Some(bar) = &mut self.bar {
                    bar.set(progress.done as u64);
                }
                if event == Event::Finished {
                    self.finish_bar();
                }
            }
            Event::Failed => {
                // Without its closing line, which would read like success.
                if let Some(bar) = self.bar.take() {
                    bar.clear();
                }
            }
            Event::Documents => {}
        }
        Some(event)
    }

    fn so_far(&self) -> String {
        match &self.last {
            Some(p) => format!(
                "{} of {} windows, {} documents published",
                p.done, p.windows, p.published
            ),
            None => format!("0 of {} windows done", self.windows),
        }
    }

    fn failure(&self, progress: &Progress) -> anyhow::Error {
        let error = progress.error.as_deref().unwrap_or("no reason given");
        match &progress.resume_from {
            Some(_) if self.command != "backfill" => anyhow::anyhow!(
                "the {} stopped in window {} of {}: {error}; run it again",
                self.command,
                progress.done + 1,
                progress.windows
            ),
            Some(at) => anyhow::anyhow!(
                "the {} stopped in window {} of {}: {error}. {} documents were fetched before; to go on, run it again with --from \"{at}\"",
                self.command,
                progress.done + 1,
                progress.windows,
                progress.fetched
            ),
            None => anyhow::anyhow!("the {} was refused: {error}", self.command),
        }
    }

    fn interrupted(&self, serving: bool) -> anyhow::Error {
        if serving {
            anyhow::anyhow!("interrupted after {}", self.so_far())
        } else {
            anyhow::anyhow!(
                "interrupted after {}; the producer stops this backfill after the window in progress",
                self.so_far()
            )
        }
    }
}
