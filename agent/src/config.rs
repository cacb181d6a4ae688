//! The agent's configuration file: TOML, one `[node]` table and one
//! `[[rule]]` table per rule.
//!
//! ```toml
//! [node]
//! budget = "6G"        # the RAM (RSS) all managed processes share; or "auto"
//! reserve = "1G"       # auto: memory the node keeps free beyond the processes
//! pressure = "0.5%"    # auto: the share of time stalled on memory the node may see
//! adopt = true         # also manage processes already under farmem that match a rule
//!
//! [[rule]]
//! name = "cache"
//! command = "redis-server"   # or cgroup = "/system.slice/web" (a prefix), or label = "batch"
//! priority = "high"          # high, normal (the default) or low
//! min = "512M"               # never below this
//! max = "4G"                 # never above this
//! stall = "2%"               # past this stall it takes memory from calmer processes
//! ```
//!
//! Rules are tried in order; the first that matches a process is its rule.
//! A process no rule matches is managed at `normal` priority with no bounds.
//! A file that does not parse, or names a field or value this version does
//! not know, is refused with one line naming the line and field.

use farmem_runtime::policy::{parse_size, parse_stall};
use serde::Deserialize;

use crate::wire::Hello;

/// Who gives memory first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Squeezed first: batch work.
    Low,
    /// The default.
    Normal,
    /// Squeezed last.
    High,
}

impl Priority {
    /// The name a config writes.
    pub fn name(self) -> &'static str {
        match self {
            Priority::Low => "low",
            Priority::Normal => "normal",
            Priority::High => "high",
        }
    }
}

/// What a rule matches.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Matcher {
    /// The command name (`comm`) or the executable's file name.
    Command(String),
    /// A cgroup path prefix (whole path components).
    Cgroup(String),
    /// `FARMEM_LABEL` of the process.
    Label(String),
}

impl Matcher {
    /// Whether the process that said `hello` matches.
    pub fn matches(&self, hello: &Hello) -> bool {
        match self {
            Matcher::Command(c) => *c == hello.comm || *c == hello.exe,
            Matcher::Cgroup(prefix) => {
                let p = prefix.trim_end_matches('/');
                hello.cgroup == p || hello.cgroup.starts_with(&format!("{p}/")) || p.is_empty()
            }
            Matcher::Label(l) => hello.label.as_deref() == Some(l.as_str()),
        }
    }
}

/// One rule.
#[derive(Clone, Debug, PartialEq)]
pub struct Rule {
    /// Its name, in metrics and logs.
    pub name: String,
    /// What it matches.
    pub matcher: Matcher,
    /// Its priority.
    pub priority: Priority,
    /// Bytes of resident heap it never goes below.
    pub min: u64,
    /// Bytes it never goes above, if bounded.
    pub max: Option<u64>,
    /// The stall (a share of time, summed over its threads) past which a
    /// process of the rule takes memory from calmer ones (see
    /// [`crate::budget`]). `None`: the priority's default,
    /// [`crate::budget::default_stall`].
    pub stall: Option<f64>,
}

/// How the node's budget is set.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum NodeBudget {
    /// A fixed number of bytes of RAM (RSS) shared by every managed process.
    Fixed(u64),
    /// From the node: what the processes hold plus what is available, less
    /// `reserve`, lowered while memory pressure is above `pressure`.
    Auto {
        /// Bytes kept free.
        reserve: u64,
        /// The share of time stalled on memory (PSI `some avg10`) allowed.
        pressure: f64,
    },
}

/// A parsed configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The node's budget.
    pub node: NodeBudget,
    /// Whether processes already under farmem (not started with `--agent`)
    /// that match a rule are managed too, through their statistics sockets.
    pub adopt: bool,
    /// The rules, in order.
    pub rules: Vec<Rule>,
}

impl Config {
    /// The rule of the process that said `hello`: its index, or `None`.
    pub fn rule_for(&self, hello: &Hello) -> Option<usize> {
        self.rules.iter().position(|r| r.matcher.matches(hello))
    }
}

/// Why a configuration was refused: the line and field at fault.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {field}: {reason}")]
pub struct ConfigError {
    /// The line, from 1 (0 when the file is empty or unreadable).
    pub line: usize,
    /// The field, as the file writes it (`rule[2].min`).
    pub field: String,
    /// What is wrong and what is accepted.
    pub reason: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    node: Option<toml::Spanned<RawNode>>,
    #[serde(default)]
    rule: Vec<toml::Spanned<RawRule>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNode {
    budget: Option<toml::Spanned<String>>,
    reserve: Option<toml::Spanned<String>>,
    pressure: Option<toml::Spanned<String>>,
    adopt: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: toml::Spanned<String>,
    command: Option<toml::Spanned<String>>,
    cgroup: Option<toml::Spanned<String>>,
    label: Option<toml::Spanned<String>>,
    priority: Option<toml::Spanned<String>>,
    min: Option<toml::Spanned<String>>,
    max: Option<toml::Spanned<String>>,
    stall: Option<toml::Spanned<String>>,
}

/// The line of byte offset `at` in `text`, from 1.
fn line_of(text: &str, at: usize) -> usize {
    text[..at.min(text.len())].bytes().filter(|b| *b == b'\n').count() + 1
}

/// Parses a configuration file's text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        // toml's message names the key (`unknown field `maxx``) on its first line.
        let msg = e.message().lines().next().unwrap_or("not TOML").to_owned();
        let field = msg.split('`').nth(1).unwrap_or("-").to_owned();
        ConfigError { line, field, reason: msg }
    })?;
    let err = |span: std::ops::Range<usize>, field: String, reason: String| ConfigError { line: line_of(text, span.start), field, reason };
    let size = |v: &toml::Spanned<String>, field: String| parse_size(v.get_ref()).map_err(|r| err(v.span(), field, r));
    let adopt = raw.node.as_ref().and_then(|n| n.get_ref().adopt).unwrap_or(false);
    let node = match raw.node {
        None => NodeBudget::Auto { reserve: 1 << 30, pressure: 0.005 },
        Some(n) => {
            let n = n.into_inner();
            match &n.budget {
                Some(b) if b.get_ref() != "auto" => {
                    for (f, v) in [("reserve", &n.reserve), ("pressure", &n.pressure)] {
                        if let Some(v) = v {
                            return Err(err(v.span(), format!("node.{f}"), "only a budget of \"auto\" takes it: a fixed budget is the budget".into()));
                        }
                    }
                    NodeBudget::Fixed(size(b, "node.budget".into())?)
                }
                _ => NodeBudget::Auto {
                    reserve: n.reserve.as_ref().map(|v| size(v, "node.reserve".into())).transpose()?.unwrap_or(1 << 30),
                    pressure: match &n.pressure {
                        Some(v) => parse_stall(v.get_ref()).map_err(|r| err(v.span(), "node.pressure".into(), r))?,
                        None => 0.005,
                    },
                },
            }
        }
    };
    let mut rules = Vec::new();
    for (k, spanned) in raw.rule.into_iter().enumerate() {
        let whole = spanned.span();
        let r = spanned.into_inner();
        let field = |f: &str| format!("rule[{}].{f}", k + 1);
        let matchers: Vec<Matcher> = [
            r.command.as_ref().map(|v| Matcher::Command(v.get_ref().clone())),
            r.cgroup.as_ref().map(|v| Matcher::Cgroup(v.get_ref().clone())),
            r.label.as_ref().map(|v| Matcher::Label(v.get_ref().clone())),
        ]
        .into_iter()
        .flatten()
        .collect();
        if matchers.len() != 1 {
            return Err(err(whole, field("command"), format!("rule {:?} needs exactly one of command, cgroup or label, not {}", r.name.get_ref(), matchers.len())));
        }
        let priority = match r.priority.as_ref().map(|p| (p, p.get_ref().as_str())) {
            None => Priority::Normal,
            Some((_, "high")) => Priority::High,
            Some((_, "normal")) => Priority::Normal,
            Some((_, "low")) => Priority::Low,
            Some((p, other)) => return Err(err(p.span(), field("priority"), format!("`{other}` is not a priority: high, normal or low"))),
        };
        let min = r.min.as_ref().map(|v| size(v, field("min"))).transpose()?.unwrap_or(0);
        let max = r.max.as_ref().map(|v| size(v, field("max"))).transpose()?;
        if let (Some(max), Some(v)) = (max, &r.max) {
            if max < min {
                return Err(err(v.span(), field("max"), format!("max {max} is below min {min}")));
            }
        }
        let stall = r.stall.as_ref().map(|v| parse_stall(v.get_ref()).map_err(|reason| err(v.span(), field("stall"), reason))).transpose()?;
        rules.push(Rule { name: r.name.into_inner(), matcher: matchers.into_iter().next().expect("one"), priority, min, max, stall });
    }
    Ok(Config { node, adopt, rules })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[node]
budget = "600M"

[[rule]]
name = "cache"
command = "redis-server"
priority = "high"
min = "64M"
stall = "2%"

[[rule]]
name = "web"
cgroup = "/system.slice/web"
max = "1G"

[[rule]]
name = "batch"
label = "batch"
priority = "low"
"#;

    fn hello(comm: &str, cgroup: &str, label: Option<&str>) -> Hello {
        Hello { pid: 1, comm: comm.into(), exe: comm.into(), cgroup: cgroup.into(), label: label.map(Into::into), stats: String::new() }
    }

    #[test]
    fn a_good_file_parses_and_rules_match_in_order() {
        let c = parse(GOOD).unwrap();
        assert_eq!(c.node, NodeBudget::Fixed(600 << 20));
        assert_eq!(c.rules.len(), 3);
        assert_eq!((c.rules[0].priority, c.rules[0].min, c.rules[0].max, c.rules[0].stall), (Priority::High, 64 << 20, None, Some(0.02)));
        assert_eq!((c.rules[1].priority, c.rules[1].max), (Priority::Normal, Some(1 << 30)));
        assert_eq!(c.rule_for(&hello("redis-server", "/", None)), Some(0));
        assert_eq!(c.rule_for(&hello("nginx", "/system.slice/web/x", None)), Some(1));
        assert_eq!(c.rule_for(&hello("nginx", "/system.slice/webby", None)), None, "whole path components");
        assert_eq!(c.rule_for(&hello("python3", "/", Some("batch"))), Some(2));
        assert_eq!(c.rule_for(&hello("python3", "/", None)), None);
        let auto = parse("[node]\nbudget = \"auto\"\nreserve = \"2G\"\npressure = \"1%\"\n").unwrap();
        assert_eq!(auto.node, NodeBudget::Auto { reserve: 2 << 30, pressure: 0.01 });
        assert!(matches!(parse("").unwrap().node, NodeBudget::Auto { .. }));
        assert!(!c.adopt && parse("[node]\nbudget = \"1G\"\nadopt = true\n").unwrap().adopt);
    }

    #[test]
    fn a_bad_file_is_refused_with_its_line_and_field() {
        for (text, line, field) in [
            ("[node]\nbudget = \"lots\"\n", 2, "node.budget"),
            ("[[rule]]\nname = \"a\"\ncommand = \"x\"\nmin = \"1G\"\nmax = \"1M\"\n", 5, "rule[1].max"),
            ("[[rule]]\nname = \"a\"\ncommand = \"x\"\npriority = \"urgent\"\n", 4, "rule[1].priority"),
            ("[[rule]]\nname = \"a\"\n", 1, "rule[1].command"),
            ("[[rule]]\nname = \"a\"\ncommand = \"x\"\nlabel = \"y\"\n", 1, "rule[1].command"),
            ("[[rule]]\nname = \"a\"\ncommand = \"x\"\nmaxx = \"1G\"\n", 4, "maxx"),
            ("[node]\nbudget = \"1G\"\nreserve = \"1G\"\n", 3, "node.reserve"),
            ("[[rule]]\nname = \"a\"\ncommand = \"x\"\nstall = \"often\"\n", 4, "rule[1].stall"),
            ("[node\n", 1, "-"),
        ] {
            let e = parse(text).expect_err(text);
            assert_eq!((e.line, e.field.as_str()), (line, field), "{text:?}: {e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
    }
}
