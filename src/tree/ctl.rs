//! The text of the ctl and offset files: the commands written to them,
//! parsed and checked before anything is applied, and the status they read.
//!
//! Root `/ctl`, one command a line:
//! ```text
//! create NAME [capacity=N] [framing=line|write] [timeout=DURATION] [retain=LIMIT]
//!             [max_bytes=BYTES|none] [rate=N/s|none]
//! remove NAME
//! ```
//! A topic's `ctl`, one command a line:
//! ```text
//! reset | close | capacity N | framing line|write | timeout DURATION | retain LIMIT | forget GROUP
//! max_bytes BYTES|none | rate N/s|none
//! ```
//! LIMIT is what a topic keeps of the messages every group has taken
//! (`broker::Retention`): a count (`1000`), bytes (`64M`), an age (`1h`)
//! or `none`.
//! DURATION is humantime (`500ms`, `2s`, `1m 30s`) or `none` (no limit); a
//! zero duration is refused, as by the CLI and the config. GROUP is the rest of the line; `""` names the default group.
//!
//! Status reads are "key value" lines. A topic's groups come one a line as
//! `group "NAME" offset N lag N unacked N blocked N`, the name quoted (with
//! Rust escapes) so the default group shows as `""`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::broker::{
    self, BrokerStatus, Framing, Rate, Retention, Seq, Setting, TopicConfig, TopicStatus,
};

/// The file names inside a topic directory.
pub const RESERVED: [&str; 3] = ["ctl", "data", "offset"];

/// The file names of the root, which no topic may take: `ctl`, and
/// `topics` (the listing). A topic named `topics` (or `topics/…`) from
/// before the listing existed cannot be made any more.
pub const ROOT_FILES: [&str; 2] = ["ctl", "topics"];

/// A command of the root ctl file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCmd {
    /// Create a topic; settings not given come from the server's defaults.
    Create {
        name: String,
        capacity: Option<u64>,
        framing: Option<Framing>,
        timeout: Option<Option<Duration>>,
        max_message: Option<u64>,
        retain: Option<Retention>,
        max_bytes: Option<Option<u64>>,
        rate: Option<Option<Rate>>,
    },
    Remove(String),
}

/// A command of a topic's ctl file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopicCmd {
    Reset,
    Close,
    Set(Setting),
    Forget(String),
}

// Error texts never name the `timeout` setting: plain 9P2000 clients such
// as 9pfuse turn an error's text into an errno by substring, and the word
// would make any mistyped command read "Connection timed out" (see the
// table in error.rs). The settings' names are in the ctl file itself.
const ROOT_USAGE: &str = "want create NAME [capacity=N] [framing=line|write] [SETTING=DURATION for the wait limit] [max_message=BYTES] [retain=LIMIT] [max_bytes=BYTES] [rate=N/s], remove NAME";
const TOPIC_USAGE: &str = "want reset, close, capacity N, framing line|write, max_message BYTES, retain LIMIT, max_bytes BYTES, rate N/s, forget GROUP, or the wait limit with its name as this file shows it";

/// The non-blank lines of a ctl write, trimmed; an error if it is not text.
fn lines(text: &[u8]) -> Result<Vec<&str>, String> {
    let text = std::str::from_utf8(text).map_err(|_| "command is not UTF-8 text".to_string())?;
    Ok(text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect())
}

/// Parse every line of a root ctl write; the first bad line fails it all.
pub fn parse_root(text: &[u8]) -> Result<Vec<RootCmd>, String> {
    lines(text)?.into_iter().map(parse_root_line).collect()
}

fn parse_root_line(line: &str) -> Result<RootCmd, String> {
    let mut words = line.split_whitespace();
    let verb = words.next().unwrap_or_default();
    match verb {
        "create" => {
            let name = words
                .next()
                .ok_or_else(|| "create: missing topic name".to_string())?;
            check_name(name)?;
            let (mut capacity, mut framing, mut timeout, mut max_message, mut retain) =
                (None, None, None, None, None);
            let (mut max_bytes, mut rate) = (None, None);
            for opt in words {
                let (key, value) = opt.split_once('=').unwrap_or((opt, ""));
                match key {
                    "capacity" => capacity = Some(parse_capacity(value)?),
                    "framing" => framing = Some(parse_framing(value)?),
                    "timeout" => timeout = Some(parse_timeout(value)?),
                    "max_message" => max_message = Some(parse_size(value)?),
                    "retain" => retain = Some(Retention::parse(value)?),
                    "max_bytes" => max_bytes = Some(parse_max_bytes(value)?),
                    "rate" => rate = Some(Rate::parse(value)?),
                    _ => {
                        return Err(format!(
                            "create: unknown option {opt:?}; want capacity=N, framing=line|write, max_message=BYTES, retain=LIMIT, max_bytes=BYTES, rate=N/s, or the wait limit as a topic's ctl file names it"
                        ));
                    }
                }
            }
            Ok(RootCmd::Create {
                name: name.to_string(),
                capacity,
                framing,
                timeout,
                max_message,
                retain,
                max_bytes,
                rate,
            })
        }
        "remove" => {
            let name = words
                .next()
                .ok_or_else(|| "remove: missing topic name".to_string())?;
            if let Some(extra) = words.next() {
                return Err(format!("remove: unexpected {extra:?} after the topic name"));
            }
            check_name(name)?;
            Ok(RootCmd::Remove(name.to_string()))
        }
        _ => Err(format!("unknown command {verb:?}; {ROOT_USAGE}")),
    }
}

/// Parse every line of a topic ctl write; the first bad line fails it all.
pub fn parse_topic(text: &[u8]) -> Result<Vec<TopicCmd>, String> {
    lines(text)?.into_iter().map(parse_topic_line).collect()
}

fn parse_topic_line(line: &str) -> Result<TopicCmd, String> {
    let (verb, rest) = match line.split_once(char::is_whitespace) {
        Some((verb, rest)) => (verb, rest.trim()),
        None => (line, ""),
    };
    let one_arg = |what: &str| -> Result<&str, String> {
        if rest.is_empty() {
            Err(format!("{verb}: missing {what}"))
        } else if rest.contains(char::is_whitespace) {
            Err(format!("{verb}: want one {what}, got {rest:?}"))
        } else {
            Ok(rest)
        }
    };
    let no_arg = || -> Result<(), String> {
        match rest.is_empty() {
            true => Ok(()),
            false => Err(format!("{verb}: takes no argument, got {rest:?}")),
        }
    };
    Ok(match verb {
        "reset" => no_arg().map(|_| TopicCmd::Reset)?,
        "close" => no_arg().map(|_| TopicCmd::Close)?,
        "capacity" => TopicCmd::Set(Setting::Capacity(parse_capacity(one_arg("N")?)?)),
        "framing" => TopicCmd::Set(Setting::Framing(parse_framing(one_arg("line|write")?)?)),
        "timeout" => TopicCmd::Set(Setting::Timeout(parse_timeout(rest)?)),
        "max_message" => TopicCmd::Set(Setting::MaxMessage(parse_size(one_arg("BYTES")?)?)),
        "retain" => TopicCmd::Set(Setting::Retain(Retention::parse(one_arg("LIMIT")?)?)),
        "max_bytes" => TopicCmd::Set(Setting::MaxBytes(parse_max_bytes(one_arg("BYTES")?)?)),
        "rate" => TopicCmd::Set(Setting::Rate(Rate::parse(one_arg("N/s")?)?)),
        "forget" => match rest {
            "" => return Err("forget: missing group name (\"\" is the default group)".into()),
            group => {
                let group = unquote(group).unwrap_or_else(|| group.to_string());
                check_group(&group)?;
                TopicCmd::Forget(group)
            }
        },
        _ => return Err(format!("unknown command {verb:?}; {TOPIC_USAGE}")),
    })
}

fn parse_capacity(s: &str) -> Result<u64, String> {
    s.parse()
        .map_err(|_| format!("bad capacity {s:?}: want a whole number ≥ 0"))
}

fn parse_size(s: &str) -> Result<u64, String> {
    broker::parse_size(s).map_err(|why| format!("bad max_message {s:?}: {why}"))
}

/// `max_bytes`: a size as `max_message` takes one, or `none`.
fn parse_max_bytes(s: &str) -> Result<Option<u64>, String> {
    broker::parse_max_bytes(s)
}

/// The text of a `max_bytes` setting, as `parse_max_bytes` takes it.
pub fn max_bytes_text(max: Option<u64>) -> String {
    max.map_or("none".into(), |m| m.to_string())
}

fn parse_framing(s: &str) -> Result<Framing, String> {
    match s {
        "line" => Ok(Framing::Line),
        "write" => Ok(Framing::Write),
        _ => Err(format!("bad framing {s:?}: want line or write")),
    }
}

/// A wait limit: humantime, or `none` for none. A zero duration is
/// refused, as by the CLI and the config: "0" once meant "none" here and
/// "fail at once" elsewhere, so it means nothing anywhere.
pub fn parse_timeout(s: &str) -> Result<Option<Duration>, String> {
    match s {
        "" => Err("missing DURATION (e.g. 5s, 500ms, or none)".into()),
        "none" => Ok(None),
        _ => match humantime::parse_duration(s) {
            Ok(d) if d.is_zero() => Err(format!(
                "a zero duration {s:?} is refused (give a positive one, e.g. 5s, or none)"
            )),
            Ok(d) => Ok(Some(d)),
            Err(e) => Err(format!("bad duration {s:?}: {e} (e.g. 5s, 500ms, or none)")),
        },
    }
}

/// Parse an offset write: a decimal sequence number.
pub fn parse_offset(text: &[u8]) -> Result<Seq, String> {
    let s = std::str::from_utf8(text).unwrap_or("").trim();
    s.parse()
        .map_err(|_| format!("bad offset {s:?}: want a decimal sequence number"))
}

/// Check a topic name: `/`-separated components of `[A-Za-z0-9._-]`, none
/// of them "." or "..", and none that would collide with a file: the first
/// is not "ctl" (the root's file), the others are not "ctl", "data" or
/// "offset" (the files of the topic that may be their parent).
pub fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty topic name".into());
    }
    for (i, c) in name.split('/').enumerate() {
        check_component(c).map_err(|e| format!("bad topic name {name:?}: {e}"))?;
        if (i == 0 && ROOT_FILES.contains(&c)) || (i > 0 && RESERVED.contains(&c)) {
            return Err(format!(
                "bad topic name {name:?}: {c:?} is the name of a file there"
            ));
        }
    }
    Ok(())
}

/// The longest group name, in bytes: a file name's limit (NAME_MAX).
pub const GROUP_MAX: usize = 255;

/// Check a reader group's name, wherever a client names one (the attach
/// name's group part, `forget`): at most `GROUP_MAX` bytes and no control
/// characters (newline, NUL, ...). So every group fits on one ctl line,
/// a topic's status stays small, and logs print it on one line. The error
/// never echoes the name itself (it may be long or hold control bytes).
pub fn check_group(group: &str) -> Result<(), String> {
    if group.len() > GROUP_MAX {
        return Err(format!(
            "bad group name: {} bytes, over the limit of {GROUP_MAX}",
            group.len()
        ));
    }
    if let Some(c) = group.chars().find(|c| c.is_control()) {
        return Err(format!(
            "bad group name: control character {c:?} not allowed (a group name is at most {GROUP_MAX} bytes of printable text)"
        ));
    }
    Ok(())
}

/// A `forget` argument in quotes, as a topic's ctl file shows a group
/// (`"NAME"`, Rust escapes), unquoted; `None` if it is not quoted. So
/// `forget ""` names the default group and `forget " x"` a group whose
/// name has spaces at its ends (which a bare name, trimmed, cannot).
fn unquote(s: &str) -> Option<String> {
    let inner = s.strip_prefix('"')?.strip_suffix('"')?;
    let mut out = String::new();
    let mut chars = inner.chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return None,
            '\\' => out.push(match chars.next()? {
                'n' => '\n',
                'r' => '\r',
                't' => '\t',
                '0' => '\0',
                'u' => {
                    let hex: String = chars.by_ref().skip(1).take_while(|&c| c != '}').collect();
                    char::from_u32(u32::from_str_radix(&hex, 16).ok()?)?
                }
                c @ ('\\' | '"' | '\'') => c,
                _ => return None,
            }),
            c => out.push(c),
        }
    }
    Some(out)
}

/// The longest name component: Linux's NAME_MAX. A longer one could not be
/// walked by Linux, and its stat record could outgrow a small msize.
const NAME_MAX: usize = 255;

/// Check one component of a topic name (its characters and length).
pub fn check_component(c: &str) -> Result<(), String> {
    if c.is_empty() {
        return Err("empty component".into());
    }
    if c == "." || c == ".." {
        return Err(format!("{c:?} is not a name"));
    }
    if c.len() > NAME_MAX {
        return Err(format!("component longer than {NAME_MAX} bytes"));
    }
    if let Some(bad) = c
        .chars()
        .find(|ch| !(ch.is_ascii_alphanumeric() || matches!(ch, '.' | '_' | '-')))
    {
        return Err(format!("{bad:?} not allowed (want A-Z a-z 0-9 . _ -)"));
    }
    Ok(())
}

fn framing_name(f: Framing) -> &'static str {
    match f {
        Framing::Line => "line",
        Framing::Write => "write",
    }
}

fn timeout_text(t: Option<Duration>) -> String {
    match t {
        None => "none".into(),
        Some(d) => humantime::format_duration(d).to_string(),
    }
}

/// Apply settings from a create command over the defaults (one argument
/// per option of `create`).
#[allow(clippy::too_many_arguments)]
pub fn create_config(
    defaults: TopicConfig,
    capacity: Option<u64>,
    framing: Option<Framing>,
    timeout: Option<Option<Duration>>,
    max_message: Option<u64>,
    retain: Option<Retention>,
    max_bytes: Option<Option<u64>>,
    rate: Option<Option<Rate>>,
) -> TopicConfig {
    TopicConfig {
        capacity: capacity.unwrap_or(defaults.capacity),
        framing: framing.unwrap_or(defaults.framing),
        timeout: timeout.unwrap_or(defaults.timeout),
        max_message: max_message.unwrap_or(defaults.max_message),
        retain: retain.unwrap_or(defaults.retain),
        max_bytes: max_bytes.unwrap_or(defaults.max_bytes),
        rate: rate.unwrap_or(defaults.rate),
    }
}

/// What the root ctl file reads.
pub struct RootStatus {
    pub uptime: Duration,
    pub connections: u64,
    pub totals: BrokerStatus,
}

pub fn root_text(s: &RootStatus) -> String {
    let mut t = format!(
        "version {}\nuptime {}\ntopics {}\nconnections {}\npushed {}\npulled {}\n",
        env!("CARGO_PKG_VERSION"),
        s.uptime.as_secs(),
        s.totals.topics,
        s.connections,
        s.totals.pushed,
        s.totals.pulled,
    );
    let _ = writeln!(t, "engine {}", s.totals.engine);
    if let Some(d) = s.totals.disk {
        let _ = write!(t, "sync {}\ndisk_bytes {}\n", d.sync, d.bytes);
    }
    t
}

/// What a topic's ctl file reads; `readers` (open data files that read)
/// is counted by the tree, the rest comes from the broker. On an engine
/// shared by several servers, a `local` line names the figures that count
/// this server's part only.
pub fn topic_text(s: &TopicStatus, readers: u64) -> String {
    let mut t = String::new();
    let c = &s.config;
    let _ = write!(
        t,
        "capacity {}\nframing {}\ntimeout {}\nmax_message {}\nretain {}\nmax_bytes {}\nrate {}\npending {}\nheld_bytes {}\nretained {}\nfirst {}\nnext {}\npushed {}\npulled {}\n\
         readers {}\nblocked_readers {}\nblocked_writers {}\n",
        c.capacity,
        framing_name(c.framing),
        timeout_text(c.timeout),
        c.max_message,
        c.retain,
        max_bytes_text(c.max_bytes),
        Rate::text(c.rate),
        s.pending,
        s.bytes,
        s.retained,
        s.first,
        s.next,
        s.pushed,
        s.pulled,
        readers,
        s.blocked_readers,
        s.blocked_writers,
    );
    for g in &s.groups {
        let _ = writeln!(
            t,
            "group {:?} offset {} lag {} unacked {} blocked {}",
            g.name, g.offset, g.lag, g.unacked, g.blocked
        );
    }
    if !s.local.is_empty() {
        let _ = writeln!(t, "local {}", s.local);
    }
    let _ = writeln!(t, "closed {}", s.closed);
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quoted_group_in_forget_is_read_as_status_shows_it() {
        for g in [
            "",
            "workers",
            " x ",
            "a\"b",
            "back\\slash",
            "\"\"",
            "e\u{301}",
        ] {
            let line = format!("forget {g:?}");
            match &parse_topic(line.as_bytes()).unwrap()[..] {
                [TopicCmd::Forget(got)] => assert_eq!(got, g, "{line}"),
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(
            parse_topic(b"forget \"a\\u{0}\"")
                .unwrap_err()
                .contains("control")
        );
        let long = format!("forget {}", "g".repeat(256));
        assert!(
            parse_topic(long.as_bytes())
                .unwrap_err()
                .contains("over the limit of 255")
        );
    }

    #[test]
    fn root_commands() {
        let cmds = parse_root(
            b"create jobs\ncreate metrics/eu capacity=3 framing=write timeout=2s\n\nremove old\n",
        )
        .unwrap();
        assert_eq!(
            cmds,
            vec![
                RootCmd::Create {
                    name: "jobs".into(),
                    capacity: None,
                    framing: None,
                    timeout: None,
                    max_message: None,
                    retain: None,
                    max_bytes: None,
                    rate: None,
                },
                RootCmd::Create {
                    name: "metrics/eu".into(),
                    capacity: Some(3),
                    framing: Some(Framing::Write),
                    timeout: Some(Some(Duration::from_secs(2))),
                    max_message: None,
                    retain: None,
                    max_bytes: None,
                    rate: None,
                },
                RootCmd::Remove("old".into()),
            ]
        );
    }

    #[test]
    fn bad_root_commands_say_why() {
        let e = parse_root(b"create ok\nfrob x\n").unwrap_err();
        assert!(
            e.starts_with("unknown command \"frob\"; want create"),
            "{e}"
        );
        assert!(
            parse_root(b"create")
                .unwrap_err()
                .contains("missing topic name")
        );
        assert!(
            parse_root(b"create a capacity=x")
                .unwrap_err()
                .contains("bad capacity")
        );
        assert!(
            parse_root(b"create a framing=byte")
                .unwrap_err()
                .contains("bad framing")
        );
        assert!(
            parse_root(b"create a colour=red")
                .unwrap_err()
                .contains("unknown option")
        );
        let collides = |s: &[u8]| parse_root(s).unwrap_err().contains("name of a file");
        assert!(collides(b"create a/ctl"));
        assert!(collides(b"create a/b/offset"));
        assert!(collides(b"create ctl"));
        assert!(
            parse_root(b"create data").is_ok(),
            "no file named data at the root"
        );
        assert!(parse_root(b"create offset/x").is_ok());
        assert!(
            parse_root(b"create a//b")
                .unwrap_err()
                .contains("empty component")
        );
        assert!(
            parse_root(b"create a/../b")
                .unwrap_err()
                .contains("not a name")
        );
        assert!(
            parse_root(b"create a*b")
                .unwrap_err()
                .contains("not allowed")
        );
        assert!(
            parse_root(b"remove a b")
                .unwrap_err()
                .contains("unexpected")
        );
    }

    #[test]
    fn topic_commands() {
        let cmds = parse_topic(
            b"reset\nclose\ncapacity 5\nframing write\ntimeout 1m 30s\ntimeout none\nforget workers\nforget \"\"\n",
        )
        .unwrap();
        assert_eq!(
            cmds,
            vec![
                TopicCmd::Reset,
                TopicCmd::Close,
                TopicCmd::Set(Setting::Capacity(5)),
                TopicCmd::Set(Setting::Framing(Framing::Write)),
                TopicCmd::Set(Setting::Timeout(Some(Duration::from_secs(90)))),
                TopicCmd::Set(Setting::Timeout(None)),
                TopicCmd::Forget("workers".into()),
                TopicCmd::Forget(String::new()),
            ]
        );
    }

    #[test]
    fn bad_topic_commands_say_why() {
        let e = parse_topic(b"reset\nfrob\n").unwrap_err();
        assert_eq!(
            e,
            "unknown command \"frob\"; want reset, close, capacity N, framing line|write, max_message BYTES, retain LIMIT, max_bytes BYTES, rate N/s, forget GROUP, or the wait limit with its name as this file shows it"
        );
        assert_eq!(
            parse_topic(b"max_bytes 64k\nmax_bytes none\nrate 100/s\nrate none").unwrap(),
            vec![
                TopicCmd::Set(Setting::MaxBytes(Some(65536))),
                TopicCmd::Set(Setting::MaxBytes(None)),
                TopicCmd::Set(Setting::Rate(Rate::parse("100").unwrap())),
                TopicCmd::Set(Setting::Rate(None)),
            ]
        );
        assert!(
            parse_topic(b"max_bytes 0")
                .unwrap_err()
                .contains("bad max_bytes")
        );
        assert!(parse_topic(b"rate 0/s").unwrap_err().contains("bad rate"));
        assert!(parse_topic(b"capacity").unwrap_err().contains("missing N"));
        assert!(
            parse_topic(b"capacity -1")
                .unwrap_err()
                .contains("bad capacity")
        );
        assert!(
            parse_topic(b"capacity 1 2")
                .unwrap_err()
                .contains("want one")
        );
        assert!(
            parse_topic(b"framing x")
                .unwrap_err()
                .contains("bad framing")
        );
        assert!(
            parse_topic(b"timeout soon")
                .unwrap_err()
                .contains("bad duration")
        );
        for zero in [&b"timeout 0"[..], b"timeout 0s", b"timeout 0ms"] {
            assert!(parse_topic(zero).unwrap_err().contains("zero duration"));
        }
        assert!(
            parse_topic(b"timeout")
                .unwrap_err()
                .contains("missing DURATION")
        );
        assert!(
            parse_topic(b"reset now")
                .unwrap_err()
                .contains("takes no argument")
        );
        assert!(
            parse_topic(b"forget")
                .unwrap_err()
                .contains("missing group")
        );
        assert!(parse_topic(b"\xff").unwrap_err().contains("UTF-8"));
    }

    #[test]
    fn offsets() {
        assert_eq!(parse_offset(b"42\n"), Ok(42));
        assert_eq!(parse_offset(b" 7 "), Ok(7));
        assert!(parse_offset(b"-1").unwrap_err().contains("bad offset"));
        assert!(parse_offset(b"x").unwrap_err().contains("bad offset"));
    }
}
