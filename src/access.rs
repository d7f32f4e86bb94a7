//! Access rules: which user may read, write or administer which topics.
//! The topic tree asks [`Rules::allows`] where a request enters it; the
//! broker knows nothing of users, and the engine only says who the user is.
//!
//! A rule names topic patterns, users, and what they may do:
//!
//! ```toml
//! [access]
//! default = ["read"]                # what a user no rule names may do
//!
//! [[access.rule]]
//! topics = ["billing/*"]            # `*` matches any run of characters, `/` too
//! users = ["alice", "billing-*"]    # user names, with the same `*`
//! allow = ["read", "write", "admin"]
//! ```
//!
//! The first rule whose patterns match both the topic and the user decides
//! (as a firewall reads its rules), else `default`. With no rules at all
//! every user may do everything (dchan's behaviour before rules existed),
//! whatever `default` says, so a loopback server needs no configuration.
//!
//! - `read`: pull (open `data` for reading), read and write `offset` (the
//!   group's own position).
//! - `write`: push (open `data` for writing).
//! - `admin`: create (mkdir, `create` in the root ctl), remove (rmdir,
//!   `remove`), and every write to the topic's ctl (reset, close, settings,
//!   forget).
//!
//! Reading a topic's `ctl` (its status, what `dchan ls` and `stat` show),
//! listing and walking are open to all: a topic's name and depth are not
//! secrets here; its messages are.

use std::sync::atomic::{AtomicU64, Ordering};

/// What a user may do to a topic: a set of [`Op`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Perms(u8);

/// One kind of operation the rules govern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Admin,
}

impl Op {
    const ALL: [Op; 3] = [Op::Read, Op::Write, Op::Admin];

    fn bit(self) -> u8 {
        match self {
            Op::Read => 1,
            Op::Write => 2,
            Op::Admin => 4,
        }
    }

    /// The word the configuration and the logs use.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write => "write",
            Op::Admin => "admin",
        }
    }

    /// An operation by its word, or why not.
    pub fn parse(word: &str) -> Result<Op, String> {
        Op::ALL
            .into_iter()
            .find(|op| op.as_str() == word)
            .ok_or_else(|| format!("unknown operation {word:?}: want read, write or admin"))
    }
}

impl Perms {
    /// Every operation.
    pub const ALL: Perms = Perms(7);
    /// None.
    pub const NONE: Perms = Perms(0);

    pub fn of(ops: &[Op]) -> Perms {
        Perms(ops.iter().fold(0, |b, op| b | op.bit()))
    }

    pub fn has(self, op: Op) -> bool {
        self.0 & op.bit() != 0
    }

    /// Whether any operation is allowed.
    pub fn any(self) -> bool {
        self.0 != 0
    }
}

/// One rule: these users on these topics may do `allow`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub topics: Vec<String>,
    pub users: Vec<String>,
    pub allow: Perms,
}

/// The server's access rules, and the count of operations they denied.
#[derive(Debug, Default)]
pub struct Rules {
    rules: Vec<Rule>,
    default: Perms,
    /// Denied operations since start, by [`Op`] (the metrics read them).
    denied: [AtomicU64; 3],
}

impl Rules {
    /// Rules checked in order; `default` for what none names.
    pub fn new(rules: Vec<Rule>, default: Perms) -> Rules {
        Rules {
            rules,
            default,
            denied: Default::default(),
        }
    }

    /// No rules: everyone may do everything.
    pub fn open() -> Rules {
        Rules::default()
    }

    /// Whether there are rules at all (else everything is allowed).
    pub fn enforced(&self) -> bool {
        !self.rules.is_empty()
    }

    /// What `user` may do to `topic`.
    pub fn perms(&self, user: &str, topic: &str) -> Perms {
        if !self.enforced() {
            return Perms::ALL;
        }
        self.rules
            .iter()
            .find(|r| {
                r.topics.iter().any(|p| glob(p, topic)) && r.users.iter().any(|p| glob(p, user))
            })
            .map_or(self.default, |r| r.allow)
    }

    /// Whether `user` may do `op` to `topic`; a refusal is counted.
    pub fn allows(&self, user: &str, topic: &str, op: Op) -> bool {
        let ok = self.perms(user, topic).has(op);
        if !ok {
            self.denied[op as usize].fetch_add(1, Ordering::Relaxed);
        }
        ok
    }

    /// Operations denied since start, per operation.
    pub fn denied(&self) -> [(Op, u64); 3] {
        Op::ALL.map(|op| (op, self.denied[op as usize].load(Ordering::Relaxed)))
    }
}

/// Whether `text` matches `pattern`, where `*` matches any run of
/// characters (none included) and everything else itself.
pub fn glob(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(i) => rest = &rest[i + part.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("*", ""));
        assert!(glob("*", "a/b"));
        assert!(glob("billing/*", "billing/eu"));
        assert!(glob("billing/*", "billing/eu/x"));
        assert!(!glob("billing/*", "billing"));
        assert!(!glob("billing/*", "billingx/eu"));
        assert!(glob("jobs", "jobs"));
        assert!(!glob("jobs", "jobs2"));
        assert!(glob("a*b*c", "aXXbYYc"));
        assert!(!glob("a*b*c", "aXXbYY"));
        assert!(glob("*-eu", "billing-eu"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn first_matching_rule_decides_then_the_default() {
        let rules = Rules::new(
            vec![
                Rule {
                    topics: vec!["billing/*".into()],
                    users: vec!["alice".into()],
                    allow: Perms::ALL,
                },
                Rule {
                    topics: vec!["billing/*".into()],
                    users: vec!["*".into()],
                    allow: Perms::of(&[Op::Read]),
                },
            ],
            Perms::NONE,
        );
        assert!(rules.allows("alice", "billing/eu", Op::Admin));
        assert!(rules.allows("bob", "billing/eu", Op::Read));
        assert!(!rules.allows("bob", "billing/eu", Op::Write));
        assert!(!rules.allows("alice", "jobs", Op::Read));
        assert_eq!(rules.denied()[1], (Op::Write, 1));
        assert!(Rules::open().allows("anyone", "x", Op::Admin));
    }
}
