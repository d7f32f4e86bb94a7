//! The server's configuration: the TOML file `dchan serve --config` reads,
//! laid over the defaults built into the binary.
//!
//! The defaults live in one place, `dchan.toml` at the root of the
//! repository, a commented TOML file that is compiled in ([`DEFAULTS`]) and
//! parsed at start like any other. A user's file is read over it: each key
//! it sets replaces the default's (tables merge key by key, lists such as
//! `listen` are replaced whole). An unknown key or a bad value fails with
//! the file, the line and the reason, before anything listens.

use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::Deserialize;

use crate::access::{Op, Perms, Rule, Rules};
use crate::tls::TlsFiles;

use crate::broker::{self, Framing, TopicConfig};
use crate::engine::{Addr, MIN_MSIZE};

/// The built-in defaults: `dchan.toml`, documented there.
pub const DEFAULTS: &str = include_str!("../dchan.toml");

/// What the server runs with. Every field is in `dchan.toml`.
#[derive(Debug, Clone, PartialEq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// The addresses to listen on (`tcp!HOST!PORT`, `HOST:PORT` or
    /// `unix!PATH`).
    #[serde(deserialize_with = "addrs")]
    pub listen: Vec<Addr>,
    /// What one client may use of the server.
    pub limits: Limits,
    /// Settings a new topic starts with.
    pub topic_defaults: TopicDefaults,
    /// What reader groups each topic keeps.
    pub groups: Groups,
    /// Topics created at start (`[[topic]]` tables).
    pub topic: Vec<TopicSpec>,
    /// Where topics are kept: in memory, or durable in a directory.
    pub storage: Storage,
    /// Listeners with their own address rules or TLS (`[[listener]]`
    /// tables), served besides `listen`'s.
    pub listener: Vec<ListenerSpec>,
    /// Start even where a listener beyond loopback has no TLS client
    /// certificates, no address rules and no access rules (protected mode off).
    pub allow_open: bool,
    /// Who may do what to which topic.
    pub access: AccessConfig,
    /// Where to serve `/metrics` and `/healthz` over HTTP, if anywhere.
    #[serde(deserialize_with = "some_addr")]
    pub metrics: Option<Addr>,
    /// The addresses the metrics listener lets in (empty: every one).
    #[serde(deserialize_with = "nets")]
    pub metrics_allow: Vec<IpNet>,
    /// Where topics are kept: this process, or a JetStream cluster.
    pub broker: BrokerSection,
}

/// `[broker]`: the engine that keeps topics (see the README, "More than
/// one machine").
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerSection {
    pub engine: Engine,
    /// NATS servers of the JetStream cluster (`nats://HOST:PORT`).
    pub nats: Vec<String>,
    /// Copies of each topic: 1, or 3.
    #[serde(deserialize_with = "replicas")]
    pub replicas: usize,
    pub storage: StorageName,
    /// What names of buckets, streams and subjects start with.
    pub prefix: String,
    /// How long an operation waits for JetStream.
    pub timeout: Timeout,
    /// How long a delivery of a lost server stays unacknowledged before
    /// another reader gets it.
    pub ack_wait: Timeout,
}

/// `broker.engine`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    #[default]
    Memory,
    Jetstream,
}

/// `broker.storage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum StorageName {
    #[default]
    File,
    Memory,
}

impl BrokerSection {
    /// The JetStream engine's settings (with `groups`' limits).
    pub fn jetstream(&self, groups: &Groups) -> crate::broker::JetStreamConfig {
        use crate::broker::jetstream::Storage;
        crate::broker::JetStreamConfig {
            servers: self.nats.clone(),
            replicas: self.replicas,
            storage: match self.storage {
                StorageName::File => Storage::File,
                StorageName::Memory => Storage::Memory,
            },
            prefix: self.prefix.clone(),
            timeout: self.timeout.0.unwrap_or(Duration::from_secs(10)),
            ack_wait: self.ack_wait.0.unwrap_or(Duration::from_secs(30)),
            groups: groups.limits(),
            ..Default::default()
        }
    }
}

/// A `[[listener]]` table: an address and its door.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSpec {
    /// `tcp!HOST!PORT`, `tls!HOST!PORT`, `HOST:PORT` or `unix!PATH`.
    #[serde(deserialize_with = "one_addr")]
    pub addr: Addr,
    /// Networks and addresses a client may come from (`10.1.0.0/16`,
    /// `192.168.7.3`); left out or empty, every one.
    #[serde(default, deserialize_with = "nets")]
    pub allow: Vec<IpNet>,
    /// The server's certificate chain (PEM), for a `tls!` address.
    pub cert: Option<PathBuf>,
    /// Its private key (PEM).
    pub key: Option<PathBuf>,
    /// The CA (PEM) that must have signed every client's certificate;
    /// the certificate's name is then the user.
    pub client_ca: Option<PathBuf>,
}

impl ListenerSpec {
    /// A listener on `addr` with no rules.
    pub fn plain(addr: Addr) -> ListenerSpec {
        ListenerSpec {
            addr,
            allow: Vec::new(),
            cert: None,
            key: None,
            client_ca: None,
        }
    }

    /// Whether it keeps strangers out by itself: address rules, or TLS
    /// client certificates.
    pub fn guarded(&self) -> bool {
        !self.allow.is_empty() || (self.client_ca.is_some() && self.is_tls())
    }

    pub fn is_tls(&self) -> bool {
        matches!(self.addr, Addr::Tls { .. })
    }

    /// The TLS files of a `tls!` listener.
    pub fn tls_files(&self) -> TlsFiles {
        TlsFiles {
            cert: self.cert.clone(),
            key: self.key.clone(),
            ca: self.client_ca.clone(),
        }
    }

    /// Refuse what cannot work: TLS files on a plain address, a `tls!`
    /// address without them, address rules on a Unix socket.
    pub fn check(&self) -> Result<(), String> {
        let has_files = self.cert.is_some() || self.key.is_some() || self.client_ca.is_some();
        match &self.addr {
            Addr::Tls { .. } if self.cert.is_none() || self.key.is_none() => {
                Err(format!("{}: a tls! listener needs cert and key", self.addr))
            }
            Addr::Tcp { .. } | Addr::Unix(_) if has_files => Err(format!(
                "{}: cert, key and client_ca are for tls! addresses",
                self.addr
            )),
            Addr::Unix(_) if !self.allow.is_empty() => Err(format!(
                "{}: allow is for TCP addresses (a Unix socket's file permissions guard it)",
                self.addr
            )),
            _ => Ok(()),
        }
    }
}

/// `[storage]`: the engine that keeps topics.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Storage {
    /// The durable engine's directory; empty for the memory engine.
    pub data_dir: std::path::PathBuf,
    /// When the durable log is synced to disk.
    pub sync: SyncSetting,
    /// How often, with `sync = "interval"`.
    #[serde(deserialize_with = "interval")]
    pub sync_interval: Duration,
    /// What each durable topic keeps of its messages in memory (`"32M"`;
    /// absent: the engine's default); the rest is read back from disk.
    #[serde(deserialize_with = "memory")]
    pub memory: Option<u64>,
}

impl Storage {
    /// The durable engine's sync mode.
    pub fn sync_mode(&self) -> broker::durable::SyncMode {
        use broker::durable::SyncMode;
        match self.sync {
            SyncSetting::Always => SyncMode::Always,
            SyncSetting::Interval => SyncMode::Interval(self.sync_interval),
            SyncSetting::Never => SyncMode::Never,
        }
    }
}

/// JetStream's replica counts that make sense: 1, or 3 (a quorum of 2).
fn replicas<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        r @ (1 | 3) => Ok(r),
        r => Err(serde::de::Error::custom(format!(
            "replicas {r}: want 1, or 3 (a cluster that survives the loss of a node)"
        ))),
    }
}

/// `storage.sync`: `"always"`, `"interval"` or `"never"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum SyncSetting {
    Always,
    #[default]
    Interval,
    Never,
}

fn interval<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let text = String::deserialize(d)?;
    match humantime::parse_duration(&text) {
        Ok(d) if !d.is_zero() => Ok(d),
        _ => Err(serde::de::Error::custom(format!(
            "bad sync_interval {text:?}: want a positive duration such as \"100ms\""
        ))),
    }
}

/// `storage.memory`: a size such as `"32M"`, at least 1 MiB.
fn memory<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let text = String::deserialize(d)?;
    match broker::parse_size(&text) {
        Ok(n) if n >= 1 << 20 => Ok(Some(n)),
        _ => Err(serde::de::Error::custom(format!(
            "bad memory {text:?}: want a size of at least 1M such as \"32M\""
        ))),
    }
}

/// `[access]`: rules, first match wins, and what no rule names.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct AccessConfig {
    /// What a user no rule names may do (`["read"]`, `[]`).
    #[serde(deserialize_with = "ops")]
    pub default: Vec<Op>,
    /// The rules, in order.
    pub rule: Vec<AccessRule>,
}

/// One `[[access.rule]]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Topic patterns (`billing/*`, `*`).
    pub topics: Vec<String>,
    /// User patterns (`alice`, `*`).
    pub users: Vec<String>,
    /// What they may do: any of "read", "write", "admin".
    #[serde(deserialize_with = "ops")]
    pub allow: Vec<Op>,
}

impl AccessConfig {
    /// The tree's form of these rules.
    pub fn rules(&self) -> Rules {
        Rules::new(
            self.rule
                .iter()
                .map(|r| Rule {
                    topics: r.topics.clone(),
                    users: r.users.clone(),
                    allow: Perms::of(&r.allow),
                })
                .collect(),
            Perms::of(&self.default),
        )
    }
}

/// A list of operation words.
fn ops<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Op>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|w| Op::parse(w).map_err(serde::de::Error::custom))
        .collect()
}

/// Networks as `allow` lists them: a CIDR, or one address.
fn nets<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
    Vec::<String>::deserialize(d)?
        .iter()
        .map(|s| parse_net(s).map_err(serde::de::Error::custom))
        .collect()
}

/// A network (`10.1.0.0/16`) or one address (`192.168.7.3`, `::1`).
pub fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("bad network {s:?}: want an address or a CIDR such as 10.1.0.0/16"))
}

fn one_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Addr, D::Error> {
    String::deserialize(d)?
        .parse()
        .map_err(serde::de::Error::custom)
}

fn some_addr<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Addr>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "" | "none" => Ok(None),
        s => s.parse().map(Some).map_err(serde::de::Error::custom),
    }
}

/// Limits a bad or hostile client cannot pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// The largest msize a Tversion may agree on, in bytes.
    #[serde(deserialize_with = "msize")]
    pub max_msize: u32,
    /// Connections served at once.
    #[serde(deserialize_with = "positive")]
    pub max_connections: usize,
    /// Connections served at once from one IP address.
    #[serde(deserialize_with = "positive")]
    pub max_per_address: usize,
    /// Topics the server holds at once.
    #[serde(deserialize_with = "positive")]
    pub max_topics: usize,
    /// Fids one connection may hold at once.
    #[serde(deserialize_with = "positive")]
    pub max_fids: usize,
    /// Requests one connection may have in flight at once.
    #[serde(deserialize_with = "positive")]
    pub max_in_flight: usize,
    /// Bytes held in partial lines by all open data files together.
    pub max_unfinished_bytes: UnfinishedBytes,
}

/// `limits.max_unfinished_bytes`: a size as `max_message` takes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeValue")]
pub struct UnfinishedBytes(pub u64);

impl Default for UnfinishedBytes {
    fn default() -> Self {
        UnfinishedBytes(crate::tree::MAX_UNFINISHED_BYTES)
    }
}

impl TryFrom<SizeValue> for UnfinishedBytes {
    type Error = String;

    fn try_from(v: SizeValue) -> Result<Self, String> {
        v.parse("max_unfinished_bytes").map(UnfinishedBytes)
    }
}

/// `[groups]`: how many reader groups a topic keeps, and for how long.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct Groups {
    /// Groups one topic may have.
    #[serde(deserialize_with = "positive")]
    pub max_per_topic: usize,
    /// How long a group may go without a reader before it is dropped;
    /// "none" keeps it until `forget`.
    pub idle_expiry: Timeout,
}

impl Groups {
    /// The broker's form of these settings.
    pub fn limits(&self) -> crate::broker::GroupLimits {
        crate::broker::GroupLimits {
            max_per_topic: self.max_per_topic,
            idle_expiry: self.idle_expiry.0,
        }
    }
}

/// The settings of a topic created without its own.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TopicDefaults {
    /// How far the slowest group may lag; 0 is a rendezvous.
    pub capacity: u64,
    /// How writes become messages.
    pub framing: FramingName,
    /// How long a push or pull may wait.
    pub timeout: Timeout,
    /// The longest message.
    pub max_message: MessageSize,
    /// What is kept of what every group has taken.
    pub retain: Retain,
    /// The most bytes held for readers; a push waits while it would pass.
    pub max_bytes: MaxBytes,
    /// The most messages a second, all writers together.
    pub rate: RateName,
}

impl TopicDefaults {
    /// The broker's form of these settings.
    pub fn topic_config(&self) -> TopicConfig {
        TopicConfig {
            capacity: self.capacity,
            framing: self.framing.into(),
            timeout: self.timeout.0,
            max_message: self.max_message.0,
            retain: self.retain.0,
            max_bytes: self.max_bytes.0,
            rate: self.rate.0,
        }
    }
}

/// A topic to create at start; what it leaves out comes from
/// `[topic_defaults]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSpec {
    /// The topic's name, such as `jobs` or `metrics/eu`.
    #[serde(deserialize_with = "topic_name")]
    pub name: String,
    /// Its capacity, if not the default.
    pub capacity: Option<u64>,
    /// Its framing, if not the default.
    pub framing: Option<FramingName>,
    /// Its timeout, if not the default.
    pub timeout: Option<Timeout>,
    /// Its longest message, if not the default.
    pub max_message: Option<MessageSize>,
    /// Its retention, if not the default.
    pub retain: Option<Retain>,
    /// Its most bytes held, if not the default.
    pub max_bytes: Option<MaxBytes>,
    /// Its rate, if not the default.
    pub rate: Option<RateName>,
}

impl TopicSpec {
    /// The broker's settings for this topic, filling gaps from `defaults`.
    pub fn topic_config(&self, defaults: &TopicDefaults) -> TopicConfig {
        TopicConfig {
            capacity: self.capacity.unwrap_or(defaults.capacity),
            framing: self.framing.unwrap_or(defaults.framing).into(),
            timeout: self.timeout.unwrap_or(defaults.timeout).0,
            max_message: self.max_message.unwrap_or(defaults.max_message).0,
            retain: self.retain.unwrap_or(defaults.retain).0,
            max_bytes: self.max_bytes.unwrap_or(defaults.max_bytes).0,
            rate: self.rate.unwrap_or(defaults.rate).0,
        }
    }
}

/// A framing as the file spells it (`"line"` or `"write"`); the broker's
/// [`Framing`] stays free of serde.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum FramingName {
    #[default]
    Line,
    Write,
}

impl From<FramingName> for Framing {
    fn from(name: FramingName) -> Framing {
        match name {
            FramingName::Line => Framing::Line,
            FramingName::Write => Framing::Write,
        }
    }
}

/// A message size as the file spells it: a number of bytes, or a string
/// with a binary suffix ("64k", "16M").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(try_from = "SizeValue")]
pub struct MessageSize(pub u64);

impl Default for MessageSize {
    fn default() -> Self {
        MessageSize(broker::DEFAULT_MAX_MESSAGE)
    }
}

/// What a size may be written as.
#[derive(Deserialize)]
#[serde(untagged)]
enum SizeValue {
    Bytes(u64),
    Text(String),
}

impl SizeValue {
    /// The size in bytes, or why not, naming the config `key`.
    fn parse(self, key: &str) -> Result<u64, String> {
        let text = match self {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(s) => s,
        };
        broker::parse_size(&text).map_err(|why| format!("bad {key} {text:?}: {why}"))
    }
}

impl TryFrom<SizeValue> for MessageSize {
    type Error = String;

    fn try_from(v: SizeValue) -> Result<Self, String> {
        v.parse("max_message").map(MessageSize)
    }
}

/// A retention limit as the file spells it: a count (`1000`), a size
/// (`"64M"`), an age (`"1h"`) or `"none"` (see `broker::Retention`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "SizeValue")]
pub struct Retain(pub broker::Retention);

impl TryFrom<SizeValue> for Retain {
    type Error = String;

    fn try_from(v: SizeValue) -> Result<Self, String> {
        let text = match v {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(s) => s,
        };
        broker::Retention::parse(&text).map(Retain)
    }
}

/// `max_bytes` as the file spells it: a size (`"64M"`, `65536`) or
/// `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "SizeValue")]
pub struct MaxBytes(pub Option<u64>);

impl TryFrom<SizeValue> for MaxBytes {
    type Error = String;

    fn try_from(v: SizeValue) -> Result<Self, String> {
        let text = match v {
            SizeValue::Bytes(n) => n.to_string(),
            SizeValue::Text(s) => s,
        };
        broker::parse_max_bytes(&text).map(MaxBytes)
    }
}

/// `rate` as the file spells it: `"1000/s"` or `"none"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub struct RateName(pub Option<broker::Rate>);

impl TryFrom<String> for RateName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, String> {
        broker::Rate::parse(&s).map(RateName)
    }
}

/// A wait limit as the file spells it: a humantime duration ("30s",
/// "1h 30m"), or "none" for no limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(try_from = "String")]
pub struct Timeout(pub Option<Duration>);

impl TryFrom<String> for Timeout {
    type Error = String;

    fn try_from(text: String) -> Result<Timeout, String> {
        if text == "none" {
            return Ok(Timeout(None));
        }
        match humantime::parse_duration(&text) {
            Ok(d) if d.is_zero() => Err(format!(
                "a zero timeout ({text:?}) is refused (give a positive duration, or \"none\" to wait for ever)"
            )),
            Ok(d) => Ok(Timeout(Some(d))),
            Err(e) => Err(format!(
                "bad timeout {text:?}: {e} (write a duration such as \"30s\", or \"none\")"
            )),
        }
    }
}

/// A topic name the broker accepts.
fn topic_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    match crate::broker::memory::valid_name(&name) {
        true => Ok(name),
        false => Err(serde::de::Error::custom(crate::broker::Error::BadName(
            name,
        ))),
    }
}

/// The `[[topic]]` names with where they are, to find one given twice.
#[derive(Deserialize)]
struct TopicNames {
    #[serde(default)]
    topic: Vec<TopicName>,
}

#[derive(Deserialize)]
struct TopicName {
    name: toml::Spanned<String>,
}

/// A list of addresses, each parsed as the command line parses it.
fn addrs<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Addr>, D::Error> {
    let addrs = Vec::<String>::deserialize(d)?;
    addrs
        .iter()
        .map(|s| s.parse().map_err(serde::de::Error::custom))
        .collect()
}

/// An msize no smaller than 9P's useful minimum.
fn msize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let v = u32::deserialize(d)?;
    if v < MIN_MSIZE {
        return Err(serde::de::Error::custom(format!(
            "max_msize {v} is below {MIN_MSIZE} bytes"
        )));
    }
    Ok(v)
}

/// A limit of at least 1.
fn positive<'de, D: serde::Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match usize::deserialize(d)? {
        0 => Err(serde::de::Error::custom("a limit must be at least 1")),
        v => Ok(v),
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config {file}: {source}")]
    Read {
        file: String,
        source: std::io::Error,
    },
    /// `line` is 1-based; `None` when the reason has no place in the file.
    #[error("config {file}{}: {reason}", line.map(|l| format!(":{l}")).unwrap_or_default())]
    Invalid {
        file: String,
        line: Option<usize>,
        reason: String,
    },
}

impl Config {
    /// Every listener: `listen`'s addresses (no rules) and `[[listener]]`s.
    pub fn listeners(&self) -> Vec<ListenerSpec> {
        let plain = self.listen.iter().cloned().map(ListenerSpec::plain);
        plain.chain(self.listener.iter().cloned()).collect()
    }

    /// The addresses the metrics listener lets in: `metrics_allow`, or
    /// when that is empty every address the 9P listeners' rules let in
    /// (empty, anyone, only when no listener has rules).
    pub fn metrics_rules(&self) -> Vec<IpNet> {
        if !self.metrics_allow.is_empty() {
            return self.metrics_allow.clone();
        }
        let mut all: Vec<IpNet> = self.listeners().into_iter().flat_map(|l| l.allow).collect();
        all.dedup();
        all
    }

    /// Protected mode (as Redis has): refuse a listener that anyone
    /// beyond this machine could reach and use for everything — no TLS
    /// client certificates, no address rules, no access rules — unless
    /// `allow_open` says an open server is wanted. Nothing is bound yet.
    pub fn check_protected(&self) -> Result<(), String> {
        if let Some(m) = &self.metrics
            && !self.allow_open
            && !m.is_loopback()
            && self.metrics_rules().is_empty()
        {
            return Err(format!(
                "protected mode: the metrics listener {m} is reachable beyond this machine with \
                 no address rules. Add `metrics_allow = [\"10.0.0.0/8\"]` (or address rules on \
                 the 9P listeners, which it then follows), or set allow_open = true (--open) \
                 if anyone may scrape it"
            ));
        }
        if self.allow_open || !self.access.rule.is_empty() {
            return Ok(());
        }
        match self
            .listeners()
            .iter()
            .find(|l| !l.addr.is_loopback() && !l.guarded())
        {
            None => Ok(()),
            Some(l) => Err(format!(
                "protected mode: {} is reachable beyond this machine with no TLS client \
                 certificates, no address rules and no access rules, so anyone who reaches it \
                 could read, write and remove every topic. Add `allow = [\"10.0.0.0/8\"]` \
                 to a [[listener]] (--allow), a tls! listener with client_ca (--client-ca), \
                 or [[access.rule]]s; or set allow_open = true (--open) if an open server \
                 is what you want",
                l.addr
            )),
        }
    }

    /// The built-in defaults alone.
    pub fn defaults() -> Config {
        Config::parse("(built-in dchan.toml)", "").expect("the built-in dchan.toml is valid")
    }

    /// Read `path` over the defaults.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let file = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: file.clone(),
            source,
        })?;
        Config::parse(&file, &text)
    }

    /// Parse `text` (named `file` in errors) over the defaults.
    ///
    /// Two passes: the text alone, into the typed structure, so that an
    /// unknown key or a bad value is reported with its line; then the
    /// defaults with the text's keys laid over them, for the values.
    pub fn parse(file: &str, text: &str) -> Result<Config, ConfigError> {
        let invalid = |text: &str, e: toml::de::Error| ConfigError::Invalid {
            file: file.to_string(),
            line: e.span().map(|span| line_of(text, span.start)),
            reason: e.message().trim_end().to_string(),
        };
        toml::from_str::<Config>(text).map_err(|e| invalid(text, e))?;
        let names: TopicNames = toml::from_str(text).map_err(|e| invalid(text, e))?;
        for (i, t) in names.topic.iter().enumerate() {
            if names.topic[..i]
                .iter()
                .any(|o| o.name.get_ref() == t.name.get_ref())
            {
                return Err(ConfigError::Invalid {
                    file: file.to_string(),
                    line: Some(line_of(text, t.name.span().start)),
                    reason: format!("topic {:?} is listed twice", t.name.get_ref()),
                });
            }
        }
        let over: toml::Table = toml::from_str(text).map_err(|e| invalid(text, e))?;
        let mut merged: toml::Table = toml::from_str(DEFAULTS).map_err(|e| invalid(DEFAULTS, e))?;
        overlay(&mut merged, over);
        let config: Config = merged.try_into().map_err(|e| ConfigError::Invalid {
            file: file.to_string(),
            line: None,
            reason: e.message().trim_end().to_string(),
        })?;
        // No line can be held longer than the budget for unfinished lines.
        let budget = config.limits.max_unfinished_bytes.0;
        let over_budget = |what: String, max: u64| ConfigError::Invalid {
            file: file.to_string(),
            line: None,
            reason: format!(
                "{what} max_message {max} is above limits.max_unfinished_bytes {budget}"
            ),
        };
        let defaults = config.topic_defaults.max_message.0;
        if defaults > budget {
            return Err(over_budget("topic_defaults".into(), defaults));
        }
        for t in &config.topic {
            let max = t.topic_config(&config.topic_defaults).max_message;
            if max > budget {
                return Err(over_budget(format!("topic {:?}:", t.name), max));
            }
        }
        let max_topics = config.limits.max_topics;
        if config.topic.len() > max_topics {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                line: None,
                reason: format!(
                    "{} [[topic]] tables, more than limits.max_topics {max_topics}",
                    config.topic.len()
                ),
            });
        }
        if config.listeners().is_empty() {
            return Err(ConfigError::Invalid {
                file: file.to_string(),
                line: None,
                reason: "no address to listen on (listen is empty and there is no [[listener]])"
                    .into(),
            });
        }
        for l in &config.listener {
            l.check().map_err(|reason| ConfigError::Invalid {
                file: file.to_string(),
                line: None,
                reason: format!("[[listener]] {reason}"),
            })?;
        }
        Ok(config)
    }
}

/// Lay `over` onto `base`: tables merge key by key, anything else replaces.
fn overlay(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(b)), toml::Value::Table(o)) => overlay(b, o),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_defaults_parse_and_are_complete() {
        let c = Config::defaults();
        assert_eq!(
            c.listen,
            vec!["tcp!127.0.0.1!5640".parse::<Addr>().unwrap()]
        );
        assert_eq!(c.limits.max_msize, 1 << 20);
        assert!(c.limits.max_connections > 0);
        assert!(c.limits.max_fids > 0);
        assert!(c.limits.max_in_flight > 0);
        assert_eq!(c.topic_defaults.capacity, 0);
        assert_eq!(c.topic_defaults.framing, FramingName::Line);
        assert_eq!(c.topic_defaults.timeout, Timeout(None));
        assert_eq!(c.topic_defaults.max_message, MessageSize::default());
        assert_eq!(c.topic_defaults.topic_config(), TopicConfig::default());
        assert!(c.topic.is_empty());
    }

    #[test]
    fn no_max_message_above_the_budget_for_unfinished_lines() {
        let e = Config::parse("my.toml", "[limits]\nmax_unfinished_bytes = \"1M\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("topic_defaults max_message"), "{e}");
        let text = "[limits]\nmax_unfinished_bytes = \"64M\"\n\
                    [[topic]]\nname = \"big\"\nmax_message = \"65M\"\n";
        let e = Config::parse("my.toml", text).unwrap_err().to_string();
        assert!(e.contains("topic \"big\": max_message"), "{e}");
        let c = Config::parse("my.toml", "[limits]\nmax_unfinished_bytes = \"64M\"\n").unwrap();
        assert_eq!(c.limits.max_unfinished_bytes, UnfinishedBytes(64 << 20));
    }

    #[test]
    fn no_more_topic_tables_than_max_topics() {
        let text = "[limits]\nmax_topics = 1\n[[topic]]\nname = \"a\"\n[[topic]]\nname = \"b\"\n";
        let e = Config::parse("my.toml", text).unwrap_err().to_string();
        assert!(
            e.contains("2 [[topic]] tables, more than limits.max_topics 1"),
            "{e}"
        );
        let text = "[limits]\nmax_topics = 1\n[[topic]]\nname = \"a\"\n";
        assert!(Config::parse("my.toml", text).is_ok());
    }

    #[test]
    fn max_message_takes_bytes_or_a_suffix() {
        let text = "[topic_defaults]\nmax_message = 65536\n\
                    [[topic]]\nname = \"big\"\nmax_message = \"64M\"\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(c.topic_defaults.max_message, MessageSize(65536));
        let big = c.topic[0].topic_config(&c.topic_defaults);
        assert_eq!(big.max_message, 64 << 20);
        let bad = "[topic_defaults]\nmax_message = \"lots\"\n";
        let e = Config::parse("t.toml", bad).unwrap_err().to_string();
        assert!(e.contains("bad max_message"), "{e}");
    }

    #[test]
    fn max_bytes_and_rate_take_a_size_a_rate_or_none() {
        let c = Config::default();
        let d = c.topic_defaults.topic_config();
        assert_eq!((d.max_bytes, d.rate), (None, None));
        let text = "[topic_defaults]\nmax_bytes = \"64M\"\nrate = \"100/s\"\n\
                    [[topic]]\nname = \"free\"\nmax_bytes = \"none\"\nrate = \"none\"\n\
                    [[topic]]\nname = \"small\"\nmax_bytes = 4096\n";
        let c = Config::parse("test.toml", text).unwrap();
        let d = c.topic_defaults.topic_config();
        assert_eq!(d.max_bytes, Some(64 << 20));
        assert_eq!(d.rate.unwrap().to_string(), "100/s");
        let free = c.topic[0].topic_config(&c.topic_defaults);
        assert_eq!((free.max_bytes, free.rate), (None, None));
        let small = c.topic[1].topic_config(&c.topic_defaults);
        assert_eq!((small.max_bytes, small.rate), (Some(4096), d.rate));
        for bad in [
            "max_bytes = \"lots\"",
            "max_bytes = 0",
            "rate = \"fast\"",
            "rate = \"0/s\"",
        ] {
            let text = format!("[topic_defaults]\n{bad}\n");
            let e = Config::parse("test.toml", &text).unwrap_err().to_string();
            assert!(e.contains("bad max_bytes") || e.contains("bad rate"), "{e}");
        }
    }

    #[test]
    fn retain_takes_a_count_a_size_or_an_age() {
        use crate::broker::Retention;
        let text = "[topic_defaults]\nretain = 1000\n\
                    [[topic]]\nname = \"h\"\nretain = \"1h\"\n\
                    [[topic]]\nname = \"b\"\nretain = \"64M\"\n";
        let c = Config::parse("t.toml", text).unwrap();
        assert_eq!(
            c.topic_defaults.topic_config().retain,
            Retention::Count(1000)
        );
        let h = c.topic[0].topic_config(&c.topic_defaults).retain;
        assert_eq!(h, Retention::Age(std::time::Duration::from_secs(3600)));
        let b = c.topic[1].topic_config(&c.topic_defaults).retain;
        assert_eq!(b, Retention::Bytes(64 << 20));
        let bad = "[topic_defaults]\nretain = \"lots\"\n";
        let e = Config::parse("t.toml", bad).unwrap_err().to_string();
        assert!(e.contains("bad retain"), "{e}");
    }

    #[test]
    fn a_file_replaces_only_what_it_sets() {
        let text = "listen = [\"unix!/tmp/d\", \"127.0.0.1:0\"]\n\
                    [limits]\nmax_fids = 10\n\
                    [topic_defaults]\ntimeout = \"30s\"\n\
                    [[topic]]\nname = \"jobs\"\ncapacity = 5\n\
                    [[topic]]\nname = \"metrics/eu\"\nframing = \"write\"\ntimeout = \"none\"\n";
        let c = Config::parse("t.toml", text).unwrap();
        let d = Config::defaults();
        let listen: Vec<String> = c.listen.iter().map(|a| a.to_string()).collect();
        assert_eq!(listen, vec!["unix!/tmp/d", "tcp!127.0.0.1!0"]);
        assert_eq!(c.limits.max_fids, 10);
        assert_eq!(c.limits.max_msize, d.limits.max_msize);
        let thirty = Some(Duration::from_secs(30));
        assert_eq!(c.topic_defaults.timeout, Timeout(thirty));
        let jobs = c.topic[0].topic_config(&c.topic_defaults);
        assert_eq!(
            (jobs.capacity, jobs.framing, jobs.timeout),
            (5, Framing::Line, thirty)
        );
        let eu = c.topic[1].topic_config(&c.topic_defaults);
        assert_eq!(
            (eu.capacity, eu.framing, eu.timeout),
            (0, Framing::Write, None)
        );
    }

    #[test]
    fn errors_name_the_file_line_and_reason() {
        let text = "[topic_defaults]\ncapacity = 1\n\n[[topic]]\nname = \"a\"\ncapacty = 3\n";
        let e = Config::parse("my.toml", text).unwrap_err().to_string();
        assert!(
            e.starts_with("config my.toml:6: unknown field `capacty`"),
            "{e}"
        );

        let e = Config::parse("my.toml", "[topic_defaults]\ntimeout = \"soon\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:2: bad timeout \"soon\""),
            "{e}"
        );

        let e = Config::parse("my.toml", "listen = [\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("config my.toml:"), "{e}");

        let e = Config::parse("my.toml", "\nlisten = [\"nowhere\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:2: bad address \"nowhere\""),
            "{e}"
        );

        let e = Config::parse("my.toml", "listen = []\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml: no address to listen on"),
            "{e}"
        );

        let e = Config::parse("my.toml", "[limits]\nmax_msize = 100\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:2: max_msize 100 is below 256"),
            "{e}"
        );

        let e = Config::parse("my.toml", "[limits]\n\nmax_fids = 0\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:3: a limit must be at least 1"),
            "{e}"
        );

        let e = Config::parse("my.toml", "[topic_defaults]\ntimeout = \"0s\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:2: a zero timeout (\"0s\") is refused"),
            "{e}"
        );

        let e = Config::parse(
            "my.toml",
            "[[topic]]\nname = \"a\"\n[[topic]]\nname = \"-b\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config my.toml:4: bad topic name \"-b\": want parts of"),
            "{e}"
        );

        let e = Config::parse(
            "my.toml",
            "[[topic]]\nname = \"a\"\n\n[[topic]]\nname = \"a\"\n",
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with("config my.toml:5: topic \"a\" is listed twice"),
            "{e}"
        );

        let e = Config::parse("my.toml", "[topic_defaults]\nframing = \"lines\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.starts_with("config my.toml:2: unknown variant `lines`"),
            "{e}"
        );
    }
}
