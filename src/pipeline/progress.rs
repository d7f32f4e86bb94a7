//! `dchan run`'s live lines on a terminal (`indicatif`): per stage, the
//! messages in and out, the lag, the copies, the failures (dead letters),
//! the filter processes that died and the rate,
//! read from the topics' ctl files, so workers on other machines count
//! too. Off a terminal `indicatif` draws nothing.

use std::time::{Duration, Instant};

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use tokio::task::JoinHandle;

use super::spec::{GROUP, Pipeline, copies, dead_letters, deaths, input};
use super::stage::{field, group_line};
use crate::client::{Client, Options};

/// How often the lines are redrawn.
const EVERY: Duration = Duration::from_millis(250);

/// The live lines, drawn until [`Progress::finish`].
pub struct Progress {
    task: JoinHandle<()>,
    bars: Vec<ProgressBar>,
}

impl Progress {
    /// Start drawing (on stderr, if it is a terminal).
    pub fn start(addr: &str, name: &str, p: &Pipeline) -> Progress {
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{prefix:.bold} {msg}").expect("template");
        let bars: Vec<ProgressBar> = p
            .stages
            .iter()
            .map(|s| {
                let b = multi.add(ProgressBar::new_spinner().with_style(style.clone()));
                b.set_prefix(format!("{} {}", s.name, s.command));
                b
            })
            .collect();
        let (addr, name, n) = (addr.to_string(), name.to_string(), p.stages.len());
        let lines = bars.clone();
        let hidden = multi.is_hidden();
        let task = tokio::spawn(async move {
            if hidden {
                return;
            }
            let Ok(client) = Client::connect(&addr, &Options::group(GROUP)).await else {
                return;
            };
            let mut last = vec![(0u64, Instant::now()); n];
            loop {
                tokio::time::sleep(EVERY).await;
                for k in 1..=n {
                    let read = |t: String, key: &'static str| {
                        let c = &client;
                        async move { c.ctl(&t).await.ok().and_then(|x| field(&x, key)) }
                    };
                    let inp = client.ctl(&input(&name, k)).await.unwrap_or_default();
                    let g = group_line(&inp);
                    let (taken, lag) = (g.offset, g.lag);
                    let out = read(input(&name, k + 1), "pushed").await.unwrap_or(0);
                    let copies = read(copies(&name, k), "readers").await.unwrap_or(0);
                    let failed = read(dead_letters(&name, k), "pushed").await.unwrap_or(0);
                    let died = read(deaths(&name, k), "pushed").await.unwrap_or(0);
                    let (before, at) = last[k - 1];
                    let rate = out.saturating_sub(before) as f64 / at.elapsed().as_secs_f64();
                    last[k - 1] = (out, Instant::now());
                    lines[k - 1].set_message(format!(
                        "in {taken} out {out} lag {lag} copies {copies} failed {failed} died {died} {rate:.0}/s"
                    ));
                }
            }
        });
        Progress { task, bars }
    }

    /// Stop drawing and clear the lines.
    pub async fn finish(self) {
        self.task.abort();
        let _ = self.task.await;
        for b in self.bars {
            b.finish_and_clear();
        }
    }
}
