//! What a pipeline is: its stages (command, kind, replicas, input
//! capacity, attempts, timeout, warm pool), read from `dchan run`'s
//! command line (`'a | b | c'`) or from a TOML pipeline file, and the
//! names of its topics on the server.
//!
//! Splitting `a | 'b|c' | d` at its top-level `|` is done here by hand: a
//! small scanner of sh's grammar, only as deep as finding those pipes
//! needs (quotes, backslash, `$( )`, backquotes, `${ }`, `( )`, `{ }`,
//! `case … esac`, here-documents, comments; `||` stays inside its
//! stage; a here-document's body joins its command's stage). `shlex` splits a
//! line into words but gives no positions and takes `a|b` for one word.
//! The full sh parsers on crates.io were weighed: `conch-parser` has not
//! been released since 2018; `yash-syntax` and `brush-parser` parse whole
//! programs into ASTs (and bring their own dependency trees), where we
//! need only the source text of each pipeline element, which we hand back
//! to sh as written. The scanner is checked by a table of cases.
//!
//! Each stage's text then runs as sh would run it; see [`Stage::argv`].

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
/// The most warm processes per copy: each is a process held (forked) for
/// the whole run, so a large pool is a fork bomb, not a speed-up.
pub const MAX_POOL: u32 = 64;
/// The most copies of one stage in one `dchan run` or `dchan worker`
/// (more machines add more with their own workers).
pub const MAX_REPLICAS: u32 = 256;

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

    /// The program and its arguments. The rule: a *simple command* —
    /// nothing but words of letters, digits and `-_./=,:+@%^` (quoted or
    /// not), whose first word is neither an assignment (`x=1`), nor one of
    /// sh's reserved words or builtins (`exit`, `cd`, `read`, …) — is
    /// executed directly, its words split by `shlex`; anything else
    /// (variables, globs, redirections, `;`, `&&`, compound commands, …)
    /// runs as `sh -c 'COMMAND'`. Either way a stage means what it means
    /// in sh; the direct path only saves starting a shell.
    pub fn argv(&self) -> Vec<String> {
        let plain = self
            .command
            .chars()
            .all(|c| c.is_alphanumeric() || c.is_whitespace() || "-_./=,:+@%'\"^".contains(c));
        match shlex::split(&self.command) {
            Some(words)
                if plain
                    && !words.is_empty()
                    && !words[0].contains('=')
                    && !SHELL_WORDS.contains(&words[0].as_str()) =>
            {
                words
            }
            _ => vec!["sh".into(), "-c".into(), self.command.clone()],
        }
    }
}

/// Words sh runs itself, never as a program: its reserved words, POSIX's
/// special builtins, and the builtins that act on the shell (or exist only
/// in it). `true`, `echo`, `test`, `kill`… are programs too: run directly.
const SHELL_WORDS: &[&str] = &[
    // reserved words
    "!", "{", "}", "case", "do", "done", "elif", "else", "esac", "fi", "for", "if", "in", "then",
    "until", "while", "function", "select", "time", // special builtins
    "break", ":", ".", "continue", "eval", "exec", "exit", "export", "readonly", "return", "set",
    "shift", "times", "trap", "unset", // builtins of the shell itself
    "alias", "bg", "cd", "command", "fc", "fg", "getopts", "hash", "jobs", "read", "type",
    "ulimit", "umask", "unalias", "wait", "source", "local", "declare", "typeset", "let",
];

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
        p.check_at().map_err(
            |(stage, why)| match stage.and_then(|i| stage_line(text, i)) {
                Some(l) => format!("{file}:{l}: {why}"),
                None => format!("{file}: {why}"),
            },
        )?;
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
        self.check_at().map_err(|(_, why)| why)
    }

    /// [`Pipeline::check`], with the index of the stage at fault.
    fn check_at(&self) -> Result<(), (Option<usize>, String)> {
        if self.stages.is_empty() {
            return Err((None, "no [[stage]]: a pipeline needs at least one".into()));
        }
        if let Some(n) = &self.name {
            check_name(n, self.stages.len()).map_err(|e| (None, format!("name: {e}")))?;
        }
        for (i, s) in self.stages.iter().enumerate() {
            self.check_stage(i, s).map_err(|why| (Some(i), why))?;
        }
        Ok(())
    }

    fn check_stage(&self, i: usize, s: &Stage) -> Result<(), String> {
        {
            let what = match s.name.as_str() {
                "" => format!("stage {}", i + 1),
                name => format!("stage {} ({name:?})", i + 1),
            };
            if s.command.trim().is_empty() {
                return Err(format!("{what}: empty command"));
            }
            if s.attempts == 0 {
                return Err(format!("{what}: attempts must be at least 1"));
            }
            if s.replicas > MAX_REPLICAS {
                return Err(format!("{what}: replicas must be at most {MAX_REPLICAS}"));
            }
            if s.pool > MAX_POOL {
                return Err(format!("{what}: pool must be at most {MAX_POOL}"));
            }
            if let Err(why) = split_pipes(&s.command) {
                return Err(format!("{what}: {why} in {:?}", s.command));
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
/// The line (from 1) of the `i`-th (from 0) `[[stage]]` table of a
/// pipeline file's `text`.
fn stage_line(text: &str, i: usize) -> Option<usize> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| l.replace([' ', '\t'], "").starts_with("[[stage]]"))
        .nth(i)
        .map(|(n, _)| n + 1)
}

/// Whether `name` can name a pipeline of `stages` stages: a topic name
/// by the server's rules (not `ctl`, within the lengths) once the
/// pipeline's longest suffix is added.
pub fn check_name(name: &str, stages: usize) -> Result<(), String> {
    crate::client::check_topic(name).map_err(|e| e.to_string())?;
    crate::tree::ctl::check_name(&copies(name, stages + 1))
}

pub fn input(name: &str, k: usize) -> String {
    format!("{name}/{k}")
}
/// Where stage K puts the messages it gave up on.
pub fn dead_letters(name: &str, k: usize) -> String {
    format!("{name}/{k}.failed")
}
/// Where copies of stage K, on any machine, note each filter process that
/// died (one message each: `COPY: HOW`), so that `dchan run` counts them.
pub fn deaths(name: &str, k: usize) -> String {
    format!("{name}/{k}.died")
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

/// `line` cut at its top-level pipes, as sh reads it: a `|` is a cut
/// only outside quotes ('…', "…", \), command substitutions (`$( )`,
/// backquotes), parameter expansions (`${ }`), arithmetic (`$(( ))`),
/// subshells and groups (`( )`, `{ }`), `case … esac` (whose patterns
/// hold `|`), here-documents' bodies (`<<WORD`, `<<-WORD`) and comments;
/// `||` is sh's "or", kept inside its stage. See the module comment.
///
/// A here-document's body follows the line its `<<` is on, so in
/// `cat <<EOF | tr a-z A-Z` NEWLINE `x|y` NEWLINE `EOF` it comes after the
/// text of the stage after it: the body goes to its own stage's text (at
/// its end), as sh gives it to that command.
pub fn split_pipes(line: &str) -> Result<Vec<String>, String> {
    let s: Vec<char> = line.chars().collect();
    let mut found = Found::default();
    scan(&s, 0, Ctx::Top, &mut found)?;
    let mut ranges = Vec::new();
    let mut from = 0;
    for &cut in &found.cuts {
        ranges.push(from..cut);
        from = cut + 1;
    }
    ranges.push(from..s.len());
    let stage_of = |i: usize| ranges.iter().position(|r| r.contains(&i));
    // The bodies read in another stage than their `<<`.
    let moved: Vec<&Body> = found
        .bodies
        .iter()
        .filter(|b| stage_of(b.opened) != stage_of(b.start))
        .collect();
    let parts = ranges
        .iter()
        .enumerate()
        .map(|(k, r)| {
            let mut text: String = r
                .clone()
                .filter(|&i| !moved.iter().any(|b| (b.start..b.end).contains(&i)))
                .map(|i| s[i])
                .collect();
            for b in moved.iter().filter(|b| stage_of(b.opened) == Some(k)) {
                // A body starts on a line of its own (the one before may
                // have ended it already).
                if !text.ends_with('\n') {
                    text.push('\n');
                }
                text.extend(&s[b.start..b.end]);
            }
            text
        })
        .collect();
    Ok(parts)
}

/// What [`scan`] finds on its way.
#[derive(Debug, Default)]
struct Found {
    /// The top-level pipes' indices.
    cuts: Vec<usize>,
    /// Here-documents opened (`<<`) whose bodies start after the next
    /// newline: where each was opened, its delimiter, whether `<<-`.
    pending: Vec<(usize, String, bool)>,
    /// Here-documents' bodies read.
    bodies: Vec<Body>,
}

/// A here-document's body: lines `start..end` (its delimiter's line
/// included), opened by the `<<` at `opened`.
#[derive(Debug)]
struct Body {
    opened: usize,
    start: usize,
    end: usize,
}

/// Where [`scan`] is: what ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ctx {
    /// The whole line (pipes here are cuts).
    Top,
    /// `( … )` or `$( … )`: ends at its `)`.
    Paren,
    /// `$(( … ))`, `(( … ))` and the parentheses inside: as `Paren`, but
    /// `<<` is a shift there, not a here-document.
    Arith,
    /// `{ … }`: ends at a `}` word.
    Group,
    /// `${ … }`: ends at its `}`.
    Param,
    /// `case … esac`: `)` ends a pattern, `esac` the case.
    Case,
}

/// sh's words that keep the next word a command's first.
const OPENERS: &[&str] = &[
    "if", "then", "else", "elif", "do", "while", "until", "!", "time",
];

/// Whether `c` ends a word.
fn delimits(c: Option<&char>) -> bool {
    c.is_none_or(|c| c.is_whitespace() || ";&|()<>".contains(*c))
}

/// Scan `s` from `i` in `ctx` to its end: the index after it. In
/// [`Ctx::Top`], the top-level pipes' indices go into `found`.
fn scan(s: &[char], mut i: usize, ctx: Ctx, found: &mut Found) -> Result<usize, String> {
    // Inside a word (a `#` there is no comment, a `{` no group).
    let mut word = ctx == Ctx::Param;
    // At a command's first word (where reserved words count).
    let mut cmd = true;
    while let Some(&c) = s.get(i) {
        let next = s.get(i + 1).copied();
        match c {
            '\\' => {
                i += 2;
                word = true;
                cmd = false;
                continue;
            }
            '\'' => {
                i = 1
                    + i
                    + s[i + 1..]
                        .iter()
                        .position(|&c| c == '\'')
                        .ok_or("unterminated ' quote")?;
                i += 1;
                word = true;
                cmd = false;
                continue;
            }
            '"' => {
                i = double(s, i + 1)?;
                word = true;
                cmd = false;
                continue;
            }
            '`' => {
                i = backquote(s, i + 1)?;
                word = true;
                cmd = false;
                continue;
            }
            '$' if next == Some('(') => {
                let inner = match s.get(i + 2) {
                    Some('(') => Ctx::Arith,
                    _ => Ctx::Paren,
                };
                i = scan(s, i + 2, inner, found)?;
                word = true;
                cmd = false;
                continue;
            }
            '$' if next == Some('{') => {
                i = scan(s, i + 2, Ctx::Param, found)?;
                word = true;
                cmd = false;
                continue;
            }
            '}' if ctx == Ctx::Param => return Ok(i + 1),
            '}' if ctx == Ctx::Group && !word && delimits(s.get(i + 1)) => return Ok(i + 1),
            '#' if !word => {
                while s.get(i).is_some_and(|&c| c != '\n') {
                    i += 1;
                }
                continue;
            }
            '(' => {
                let inner = match (ctx, next) {
                    (Ctx::Arith, _) | (_, Some('(')) => Ctx::Arith,
                    _ => Ctx::Paren,
                };
                i = scan(s, i + 1, inner, found)?;
                word = false;
                cmd = false;
                continue;
            }
            ')' if ctx == Ctx::Paren || ctx == Ctx::Arith => return Ok(i + 1),
            ')' if ctx == Ctx::Case => cmd = true,
            ')' => return Err("unmatched )".into()),
            '|' if next == Some('|') => {
                i += 1;
                cmd = true;
            }
            '|' => {
                if ctx == Ctx::Top {
                    found.cuts.push(i);
                }
                cmd = true;
            }
            '<' if next == Some('<') && s.get(i + 2) == Some(&'<') => {
                // A here-string (bash): `<<<WORD`.
                i += 3;
                word = false;
                continue;
            }
            '<' if next == Some('<') && ctx != Ctx::Arith => {
                let strip = s.get(i + 2) == Some(&'-');
                let (end, delim) = here_word(s, i + 2 + strip as usize)?;
                found.pending.push((i, delim, strip));
                i = end;
                word = false;
                continue;
            }
            '\n' if !found.pending.is_empty() => {
                i = bodies(s, i + 1, found);
                word = false;
                cmd = true;
                continue;
            }
            ';' | '&' | '\n' => cmd = true,
            '{' if !word && cmd && delimits(s.get(i + 1)) => {
                i = scan(s, i + 1, Ctx::Group, found)?;
                cmd = false;
                continue;
            }
            c if c.is_whitespace() || c == '<' || c == '>' => {}
            _ if !word => {
                // A word starts: a reserved word where it counts?
                let len = s[i..].iter().take_while(|c| !delimits(Some(c))).count();
                let w: String = s[i..i + len].iter().collect();
                let whole = delimits(s.get(i + len));
                if whole && ctx == Ctx::Case && w == "esac" {
                    return Ok(i + len);
                }
                if whole && cmd && w == "case" {
                    i = scan(s, i + len, Ctx::Case, found)?;
                    cmd = false;
                    continue;
                }
                cmd = whole && OPENERS.contains(&w.as_str());
                word = true;
                i += 1;
                continue;
            }
            _ => {}
        }
        word = false;
        i += 1;
    }
    match ctx {
        Ctx::Top => Ok(i),
        Ctx::Paren => Err("unterminated ( or $(".into()),
        Ctx::Arith => Err("unterminated (( or $((".into()),
        Ctx::Group => Err("unterminated { group".into()),
        Ctx::Param => Err("unterminated ${".into()),
        Ctx::Case => Err("case without esac".into()),
    }
}

/// A here-document's delimiter word from `i` (after `<<` or `<<-`,
/// blanks allowed before it): the index after it, and the word with its
/// quotes removed (quoting it only stops expansion in the body).
fn here_word(s: &[char], mut i: usize) -> Result<(usize, String), String> {
    while s.get(i).is_some_and(|&c| c == ' ' || c == '\t') {
        i += 1;
    }
    let mut word = String::new();
    while let Some(&c) = s.get(i) {
        match c {
            '\\' => {
                word.extend(s.get(i + 1));
                i += 2;
            }
            '\'' | '"' => {
                let len = s[i + 1..]
                    .iter()
                    .position(|&q| q == c)
                    .ok_or(format!("unterminated {c} quote"))?;
                word.extend(&s[i + 1..i + 1 + len]);
                i += len + 2;
            }
            _ if delimits(Some(&c)) => break,
            _ => {
                word.push(c);
                i += 1;
            }
        }
    }
    if word.is_empty() {
        return Err("<< without a here-document's delimiter word".into());
    }
    Ok((i, word))
}

/// The bodies of the pending here-documents, one after the other, from
/// `i` (the start of the line after their `<<`): the index after the last
/// one's delimiter line (or the end: sh takes the end as the delimiter).
fn bodies(s: &[char], mut i: usize, found: &mut Found) -> usize {
    for (opened, delim, strip) in std::mem::take(&mut found.pending) {
        let start = i;
        while i < s.len() {
            let end = s[i..]
                .iter()
                .position(|&c| c == '\n')
                .map_or(s.len(), |n| i + n);
            let mut line = &s[i..end];
            if strip {
                while line.first() == Some(&'\t') {
                    line = &line[1..];
                }
            }
            let last = line.iter().collect::<String>() == delim;
            i = (end + 1).min(s.len());
            if last {
                break;
            }
        }
        found.bodies.push(Body {
            opened,
            start,
            end: i,
        });
    }
    i
}

/// After the opening `"` at `i`: the index after the closing one.
fn double(s: &[char], mut i: usize) -> Result<usize, String> {
    let mut ignored = Found::default();
    while let Some(&c) = s.get(i) {
        i = match (c, s.get(i + 1)) {
            ('"', _) => return Ok(i + 1),
            ('\\', _) => i + 2,
            ('`', _) => backquote(s, i + 1)?,
            ('$', Some('(')) if s.get(i + 2) == Some(&'(') => {
                scan(s, i + 2, Ctx::Arith, &mut ignored)?
            }
            ('$', Some('(')) => scan(s, i + 2, Ctx::Paren, &mut ignored)?,
            ('$', Some('{')) => scan(s, i + 2, Ctx::Param, &mut ignored)?,
            _ => i + 1,
        };
    }
    Err("unterminated \" quote".into())
}

/// After the opening backquote at `i`: the index after the closing one.
fn backquote(s: &[char], mut i: usize) -> Result<usize, String> {
    while let Some(&c) = s.get(i) {
        match c {
            '`' => return Ok(i + 1),
            '\\' => i += 2,
            _ => i += 1,
        }
    }
    Err("unterminated ` quote".into())
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
    fn pipes_split_where_sh_would() {
        // (line, its stages)
        let table: &[(&str, &[&str])] = &[
            ("a | b", &["a ", " b"]),
            (r#"grep 'a|b' | tr "|" x"#, &["grep 'a|b' ", r#" tr "|" x"#]),
            (r"sed s/\|/y/ | cat", &[r"sed s/\|/y/ ", " cat"]),
            ("a || b | c", &["a || b ", " c"]),
            (
                "echo $(echo a | tr a b) | cat",
                &["echo $(echo a | tr a b) ", " cat"],
            ),
            ("echo $((1 | 2)) | cat", &["echo $((1 | 2)) ", " cat"]),
            (
                "echo `echo a | tr a b` | cat",
                &["echo `echo a | tr a b` ", " cat"],
            ),
            (
                r#"echo "$(echo "|" | cat)" | wc"#,
                &[r#"echo "$(echo "|" | cat)" "#, " wc"],
            ),
            ("(a | b) | c", &["(a | b) ", " c"]),
            ("{ a | b; } | c", &["{ a | b; } ", " c"]),
            ("echo a{b,c} | c", &["echo a{b,c} ", " c"]),
            ("echo ${x:-a|b} | c", &["echo ${x:-a|b} ", " c"]),
            (
                "case $x in a|b) echo y | tr y z;; (c) :;; esac | cat",
                &["case $x in a|b) echo y | tr y z;; (c) :;; esac ", " cat"],
            ),
            ("echo case | cat", &["echo case ", " cat"]),
            ("cat # a | b\n| wc", &["cat # a | b\n", " wc"]),
            ("echo a#b | cat", &["echo a#b ", " cat"]),
            ("cat", &["cat"]),
            // Here-documents: the body goes with its command's stage.
            (
                "cat <<EOF | cat\nx|y\nEOF",
                &["cat <<EOF \nx|y\nEOF", " cat\n"],
            ),
            (
                "cat <<-'E O' | tr x z\n\tx|y\n\tE O\n",
                &["cat <<-'E O' \n\tx|y\n\tE O\n", " tr x z\n"],
            ),
            (
                "cat <<A | cat <<B\na|\nA\nb|\nB\n",
                &["cat <<A \na|\nA\n", " cat <<B\nb|\nB\n"],
            ),
            ("cat <<E\na|b", &["cat <<E\na|b"]),
            (
                "cat <<A <<B | cat\nx\nA\ny\nB",
                &["cat <<A <<B \nx\nA\ny\nB", " cat\n"],
            ),
            ("cat <<<'a|b' | cat", &["cat <<<'a|b' ", " cat"]),
            ("echo $((1 << 2)) | cat", &["echo $((1 << 2)) ", " cat"]),
            (
                "echo $(( (1 << 2) )) | cat",
                &["echo $(( (1 << 2) )) ", " cat"],
            ),
        ];
        for (line, want) in table {
            assert_eq!(split_pipes(line).unwrap(), *want, "{line:?}");
        }
        for bad in [
            "a 'b",
            "a \"b",
            "echo $(a | b",
            "(a",
            "a)",
            "{ a",
            "case x in",
            "`a",
            "cat << | b",
        ] {
            assert!(split_pipes(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn plain_words_run_directly_others_through_sh() {
        assert_eq!(Stage::new("tr a-z A-Z").argv(), ["tr", "a-z", "A-Z"]);
        assert_eq!(Stage::new("grep 'a b'").argv(), ["grep", "a b"]);
        assert_eq!(Stage::new("sort > x").argv()[..2], ["sh", "-c"]);
        assert_eq!(Stage::new("echo $HOME").argv()[..2], ["sh", "-c"]);
        for shell in ["x=1 env", "exit 3", "cd /tmp", "read x", "a || b", "(cat)"] {
            let argv = Stage::new(shell).argv();
            assert_eq!(argv, ["sh", "-c", shell], "{shell}");
        }
        assert_eq!(Stage::new("sort --key=2").argv(), ["sort", "--key=2"]);
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
