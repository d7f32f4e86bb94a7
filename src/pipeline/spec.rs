//! What a pipeline is: its stages (command, kind, replicas, input
//! capacity, attempts, timeout, warm pool), read from `dchan run`'s
//! command line (`'a | b | c'`) or from a TOML pipeline file, and the
//! names of its topics on the server.
//!
//! Splitting `a | 'b|c' | d` at its unquoted `|` is done here by hand (a
//! small scan of sh's quoting: '…', "…", and \): `shlex` splits a line
//! into words but gives no positions and treats `a|b` as one word, while
//! sh treats it as a pipe. Each stage's text is then run as sh would run
//! it: split into words by `shlex` and executed directly when it holds
//! nothing but words, else given to `sh -c` (redirections, variables,
//! globs, `&&`...). Either way a stage means what it means in sh.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How a stage treats its messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// One long-running process per copy; messages are lines on its stdin,
    /// its stdout lines are the next topic's messages (a Unix pipe).
    #[default]
    Filter,
    /// One process per message: the message on its stdin, its whole stdout
    /// one message of the next topic, its exit status deciding success.
    Each,
}

/// The number of attempts an *each* stage gives a message by default.
pub const DEFAULT_ATTEMPTS: u32 = 3;
/// The capacity of a stage's input topic by default: enough lines in
/// flight for batched writes to keep every stage busy, few enough that
/// a stuck stage holds its producers back soon.
pub const DEFAULT_CAPACITY: u64 = 4096;
/// Warm processes kept started per copy of an *each* stage by default.
pub const DEFAULT_POOL: u32 = 1;

/// One stage of a pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// A name for logs and progress, and for `dchan worker --stage NAME`;
    /// by default the stage's number.
    #[serde(default)]
    pub name: String,
    /// The command, as sh would read it.
    pub command: String,
    #[serde(default)]
    pub kind: Kind,
    /// Copies that share the stage's input (one group); 0: none where
    /// `dchan run` runs, the stage waits for workers.
    #[serde(default = "one")]
    pub replicas: u32,
    /// Capacity of the stage's input topic.
    #[serde(default = "default_capacity")]
    pub capacity: u64,
    /// *each*: how many times a message is tried before it is dead-lettered;
    /// *filter*: how many times a process that died is started again.
    #[serde(default = "default_attempts")]
    pub attempts: u32,
    /// *each*: how long one message's process may run (e.g. "30s"); none by default.
    #[serde(
        default,
        with = "opt_duration",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<Duration>,
    /// *each*: processes kept started ahead, per copy (the warm pool).
    #[serde(default = "default_pool")]
    pub pool: u32,
}

fn one() -> u32 {
    1
}
fn default_capacity() -> u64 {
    DEFAULT_CAPACITY
}
fn default_attempts() -> u32 {
    DEFAULT_ATTEMPTS
}
fn default_pool() -> u32 {
    DEFAULT_POOL
}

impl Stage {
    /// A filter stage running `command`, with the defaults.
    pub fn new(command: &str) -> Stage {
        Stage {
            name: String::new(),
            command: command.trim().to_string(),
            kind: Kind::Filter,
            replicas: 1,
            capacity: DEFAULT_CAPACITY,
            attempts: DEFAULT_ATTEMPTS,
            timeout: None,
            pool: DEFAULT_POOL,
        }
    }

    /// The program and its arguments: the stage's words when it is only
    /// words, else `sh -c COMMAND`.
    pub fn argv(&self) -> Vec<String> {
        let plain = self
            .command
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "-_./=,:+@%'\"^".contains(c));
        match shlex::split(&self.command) {
            Some(words) if plain && !words.is_empty() => words,
            _ => vec!["sh".into(), "-c".into(), self.command.clone()],
        }
    }
}

/// A whole pipeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pipeline {
    /// The pipeline's name: its topics are `NAME/1`, `NAME/2`...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "stage")]
    pub stages: Vec<Stage>,
}

impl Pipeline {
    /// The stages of `'a | b | c'`, each a filter with the defaults.
    pub fn from_line(line: &str) -> Result<Pipeline, String> {
        let parts = split_pipes(line)?;
        let mut stages = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            if part.trim().is_empty() {
                return Err(format!("stage {} is empty (want 'cmd1 | cmd2 ...')", i + 1));
            }
            let mut s = Stage::new(part);
            s.name = (i + 1).to_string();
            stages.push(s);
        }
        Ok(Pipeline { name: None, stages })
    }

    /// Parse a pipeline file's text; an error says the line and why.
    pub fn from_toml(file: &str, text: &str) -> Result<Pipeline, String> {
        let mut p: Pipeline = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            let reason = e.message().trim_end().to_string();
            match line {
                Some(l) => format!("{file}:{l}: {reason}"),
                None => format!("{file}: {reason}"),
            }
        })?;
        p.check().map_err(|why| format!("{file}: {why}"))?;
        for (i, s) in p.stages.iter_mut().enumerate() {
            if s.name.is_empty() {
                s.name = (i + 1).to_string();
            }
        }
        Ok(p)
    }

    /// What [`Pipeline::from_toml`] reads back.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a pipeline serializes")
    }

    /// Rules serde cannot say: at least one stage, sane numbers, names unique.
    pub fn check(&self) -> Result<(), String> {
        if self.stages.is_empty() {
            return Err("no [[stage]]: a pipeline needs at least one".into());
        }
        if let Some(n) = &self.name {
            crate::client::check_topic(n).map_err(|e| format!("name: {e}"))?;
        }
        for (i, s) in self.stages.iter().enumerate() {
            let what = format!("stage {} ({:?})", i + 1, s.name);
            if s.command.trim().is_empty() {
                return Err(format!("{what}: empty command"));
            }
            if s.attempts == 0 {
                return Err(format!("{what}: attempts must be at least 1"));
            }
            if shlex::split(&s.command).is_none() {
                return Err(format!("{what}: unbalanced quotes in {:?}", s.command));
            }
            if !s.name.is_empty() && self.stages[..i].iter().any(|o| o.name == s.name) {
                return Err(format!("{what}: the name is used twice"));
            }
        }
        Ok(())
    }

    /// The 1-based number of the stage called `name` (or numbered so).
    pub fn stage_named(&self, name: &str) -> Option<usize> {
        if let Some(i) = self.stages.iter().position(|s| s.name == name) {
            return Some(i + 1);
        }
        match name.parse::<usize>() {
            Ok(k) if k >= 1 && k <= self.stages.len() => Some(k),
            _ => None,
        }
    }
}

/// The topics of pipeline `name`: stage K reads `NAME/K` and writes
/// `NAME/K+1`; the pipeline's input is `NAME/1`, its output `NAME/N+1`.
pub fn input(name: &str, k: usize) -> String {
    format!("{name}/{k}")
}
/// Where stage K puts the messages it gave up on.
pub fn dead_letters(name: &str, k: usize) -> String {
    format!("{name}/{k}.failed")
}
/// Whose readers are the live copies of stage K (each holds it open).
pub fn copies(name: &str, k: usize) -> String {
    format!("{name}/{k}.copies")
}
/// Where `dchan run` leaves the pipeline's description for workers.
pub fn spec_topic(name: &str) -> String {
    format!("{name}/pipeline")
}
/// The group every stage reads its input as (and `dchan run` its output).
pub const GROUP: &str = "pipeline";

/// `line` cut at its unquoted `|`s, quoting as in sh: '…' keeps all, "…"
/// keeps all but \" and \\, \ outside quotes keeps the next character.
/// `||` is refused (sh's "or", not a pipe).
pub fn split_pipes(line: &str) -> Result<Vec<String>, String> {
    let mut parts = Vec::new();
    let mut cur = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                cur.push(c);
                loop {
                    match chars.next() {
                        Some('\'') => break cur.push('\''),
                        Some(x) => cur.push(x),
                        None => return Err("unterminated ' quote".into()),
                    }
                }
            }
            '"' => {
                cur.push(c);
                loop {
                    match chars.next() {
                        Some('"') => break cur.push('"'),
                        Some('\\') => {
                            cur.push('\\');
                            if let Some(x) = chars.next() {
                                cur.push(x);
                            }
                        }
                        Some(x) => cur.push(x),
                        None => return Err("unterminated \" quote".into()),
                    }
                }
            }
            '\\' => {
                cur.push(c);
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            '|' if chars.peek() == Some(&'|') => {
                return Err("'||' is not a pipe (put it inside a stage with sh -c)".into());
            }
            '|' => parts.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    parts.push(cur);
    Ok(parts)
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    1 + text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
}

mod opt_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_str(&humantime::format_duration(*d).to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let text = String::deserialize(d)?;
        match humantime::parse_duration(&text) {
            Ok(d) if !d.is_zero() => Ok(Some(d)),
            Ok(_) => Err(serde::de::Error::custom(
                "a zero timeout; leave it out for none",
            )),
            Err(e) => Err(serde::de::Error::custom(format!(
                "bad duration {text:?}: {e} (e.g. 30s, 500ms)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pipes_split_outside_quotes_only() {
        let p = split_pipes(r#"grep 'a|b' | tr "|" x | sed s/\|/y/"#).unwrap();
        assert_eq!(p, vec!["grep 'a|b' ", r#" tr "|" x "#, r" sed s/\|/y/"]);
        assert!(split_pipes("a || b").is_err());
        assert!(split_pipes("a 'b").is_err());
    }

    #[test]
    fn plain_words_run_directly_others_through_sh() {
        assert_eq!(Stage::new("tr a-z A-Z").argv(), ["tr", "a-z", "A-Z"]);
        assert_eq!(Stage::new("grep 'a b'").argv(), ["grep", "a b"]);
        assert_eq!(Stage::new("sort > x").argv()[..2], ["sh", "-c"]);
        assert_eq!(Stage::new("echo $HOME").argv()[..2], ["sh", "-c"]);
    }

    #[test]
    fn file_errors_name_the_line() {
        let text = "[[stage]]\ncommand = \"cat\"\nkind = \"sometimes\"\n";
        let e = Pipeline::from_toml("p.toml", text).unwrap_err();
        assert!(e.starts_with("p.toml:3: "), "{e}");
        let e = Pipeline::from_toml("p.toml", "name = \"x\"\n").unwrap_err();
        assert!(e.contains("stage"), "{e}");
        let t = "[[stage]]\ncommand = \"cat\"\ntimeout = \"soon\"\n";
        assert!(
            Pipeline::from_toml("p.toml", t)
                .unwrap_err()
                .starts_with("p.toml:3")
        );
    }

    #[test]
    fn a_pipeline_reads_back_what_it_writes() {
        let text = "name = \"w\"\n[[stage]]\nname = \"up\"\ncommand = \"tr a-z A-Z\"\n\
                    [[stage]]\ncommand = \"wc -c\"\nkind = \"each\"\nreplicas = 3\ntimeout = \"5s\"\n";
        let p = Pipeline::from_toml("p", text).unwrap();
        assert_eq!(p.stages[1].name, "2");
        assert_eq!(p.stages[1].timeout, Some(Duration::from_secs(5)));
        assert_eq!(Pipeline::from_toml("p", &p.to_toml()).unwrap(), p);
        assert_eq!(p.stage_named("up"), Some(1));
        assert_eq!(p.stage_named("2"), Some(2));
    }
}
