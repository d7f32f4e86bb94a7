//! `dchan ls [TOPIC]`: topics and their status in aligned columns.

use clap::Args;
use dchan::client::{Error, check_topic};

use super::{ConnArgs, Context, Failure, print_out};

const HELP: &str = "\
Output: a header line, then one line per topic, sorted by name (part by
part: a, a/b, a-x), in columns separated by spaces:
  TOPIC     the topic's name (nested topics as a/b)
  PENDING   messages held (not yet taken by every group)
  PUSHED    messages pushed since the topic was made
  PULLED    messages pulled, counted once per group (a message given
            back and pulled again counts again)
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
    if !prefix.is_empty() {
        check_topic(&prefix).what(what)?;
    }
    let client = args.conn.connect().await?;
    // One read of the server's listing, whatever the number of topics.
    let text = client.topics_file().await.what(what)?;
    let rows = table(&text, &prefix).map_err(|e| Failure::new(what(), e))?;
    if !prefix.is_empty() && rows.len() == 1 {
        return Err(Failure::new(what(), Error::NoTopic(prefix)));
    }
    if args.quiet {
        let names: String = rows[1..].iter().map(|r| format!("{}\n", r[0])).collect();
        return print_out(&names);
    }
    print_out(&align(&rows))
}

/// The table's rows (the header first) from the server's `topics` file,
/// for `prefix` and the topics under it ("" for all): each column found
/// by its header, so a server with more columns, or in another order,
/// still fills this table; one it does not report is "-".
fn table(text: &str, prefix: &str) -> Result<Vec<Vec<String>>, Error> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(' ').collect();
    let at: Vec<Option<usize>> = COLUMNS
        .iter()
        .map(|c| header.iter().position(|h| h == c))
        .collect();
    if at[0] != Some(0) {
        return Err(Error::Protocol(format!(
            "the topics file does not start with a TOPIC column: {:?}",
            header.join(" ")
        )));
    }
    let under = format!("{prefix}/");
    let mut rows = vec![COLUMNS.map(String::from).to_vec()];
    for line in lines {
        let fields: Vec<&str> = line.split(' ').collect();
        let name = fields[0];
        if !prefix.is_empty() && name != prefix && !name.starts_with(&under) {
            continue;
        }
        rows.push(
            at.iter()
                .map(|i| i.and_then(|i| fields.get(i)).unwrap_or(&"-").to_string())
                .collect(),
        );
    }
    Ok(rows)
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
