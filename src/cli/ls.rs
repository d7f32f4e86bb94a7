//! `dchan ls [TOPIC]`: topics and their status in aligned columns.

use std::collections::HashMap;

use clap::Args;
use dchan::client::Error;

use super::{ConnArgs, Context, Failure, print_out};

const HELP: &str = "\
Output: a header line, then one line per topic, sorted by name, in
columns separated by spaces:
  TOPIC     the topic's name (nested topics as a/b)
  PENDING   messages held (not yet taken by every group)
  PUSHED    messages pushed since the topic was made
  PULLED    messages pulled, counted once per group
  READERS   data files open for reading
  GROUPS    reader groups
  CAPACITY  how far the slowest group may lag (0: rendezvous)
  FRAMING   line or write
  STATE     open or closed
A value the server did not report is \"-\". With -q: the names alone,
one a line.

Examples:
  dchan ls                             every topic
  dchan ls metrics                     metrics and the topics under it
  dchan ls -q | xargs -n1 dchan close  close every topic";

#[derive(Args)]
#[command(after_help = HELP)]
pub struct LsArgs {
    /// List this topic and the topics under it.
    pub topic: Option<String>,
    /// Print only the names, one a line.
    #[arg(long, short)]
    pub quiet: bool,
    #[command(flatten)]
    pub conn: ConnArgs,
}

const COLUMNS: [&str; 9] = [
    "TOPIC", "PENDING", "PUSHED", "PULLED", "READERS", "GROUPS", "CAPACITY", "FRAMING", "STATE",
];

pub async fn run(args: LsArgs) -> Result<(), Failure> {
    let prefix = args.topic.clone().unwrap_or_default();
    let what = || match &args.topic {
        Some(t) => format!("ls {t}"),
        None => "ls".to_string(),
    };
    let client = args.conn.connect().await?;
    let topics = client.topics_under(&prefix).await.what(what)?;
    if args.quiet {
        let names: String = topics.iter().map(|t| format!("{t}\n")).collect();
        return print_out(&names);
    }
    let texts = client.ctl_each(&topics).await;
    let statuses = topics.iter().zip(texts).map(|(t, text)| status(t, text));
    let mut rows = vec![COLUMNS.map(String::from).to_vec()];
    for (topic, status) in topics.iter().zip(statuses) {
        match status {
            Ok(Some(row)) => rows.push(row),
            // Removed since it was listed.
            Ok(None) => {}
            Err(e) => return Err(Failure::new(format!("ls {topic}"), e)),
        }
    }
    print_out(&align(&rows))
}

/// One row of the table, from the topic's ctl file; `None` if it is gone.
fn status(topic: &str, text: Result<String, Error>) -> Result<Option<Vec<String>>, Error> {
    let text = match text {
        Ok(text) => text,
        Err(Error::NoTopic(_)) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut kv = HashMap::new();
    let mut groups = 0;
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        if key == "group" {
            groups += 1;
        } else {
            kv.insert(key, value.trim());
        }
    }
    let get = |k: &str| kv.get(k).map_or("-".to_string(), |v| v.to_string());
    let state = match kv.get("closed") {
        Some(&"true") => "closed",
        Some(_) => "open",
        None => "-",
    };
    Ok(Some(vec![
        topic.to_string(),
        get("pending"),
        get("pushed"),
        get("pulled"),
        get("readers"),
        groups.to_string(),
        get("capacity"),
        get("framing"),
        state.to_string(),
    ]))
}

/// The rows as text, each column padded to its widest cell.
fn align(rows: &[Vec<String>]) -> String {
    let mut widths = vec![0; COLUMNS.len()];
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, (cell, w)) in row.iter().zip(&widths).enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(&format!("{cell:<w$}"));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}
