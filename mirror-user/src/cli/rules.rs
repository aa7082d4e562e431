//! `mirror rules list|add|delete` and `mirror reload`: change a running
//! daemon's filters. Every change is validated like the config file and
//! applied atomically; a rejected change leaves the running rules in force.
//! Changes live in the daemon only: a reload (or restart) goes back to the
//! file's rules.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use mirror_user::config::{Action, Direction};
use mirror_user::control::{Client, Reply, Request};
use mirror_user::filter::rules::RuleView;

/// How to reach the daemon (shared by `rules` and `reload`).
#[derive(Debug, clap::Args)]
pub struct Daemon {
    /// The daemon's control socket.
    #[arg(long, value_name = "PATH", global = true)]
    pub control: Option<PathBuf>,
    /// Find the control socket in this config file.
    #[arg(short, long, value_name = "FILE", global = true)]
    pub config: Option<PathBuf>,
}

impl Daemon {
    fn client(&self) -> Result<Client> {
        Client::connect(&super::control_path(
            self.control.as_deref(),
            self.config.as_deref(),
        )?)
    }
}

#[derive(Debug, clap::Args)]
pub struct Args {
    #[command(subcommand)]
    pub op: Op,
    #[command(flatten)]
    pub daemon: Daemon,
}

#[derive(Debug, clap::Subcommand)]
pub enum Op {
    /// Show every filter's rules in force, with the sessions using it.
    List {
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Add a rule to a filter (fields as in [[filter.rule]]).
    Add(AddArgs),
    /// Delete a filter's rule by number and direction.
    Delete {
        /// The filter.
        #[arg(long)]
        filter: String,
        /// The rule number.
        #[arg(long)]
        number: u16,
        /// The rule's direction.
        #[arg(long, value_enum, default_value = "ingress")]
        direction: Direction,
    },
}

#[derive(Debug, clap::Args)]
pub struct AddArgs {
    /// The filter to change.
    #[arg(long)]
    filter: String,
    /// Rule number, 1..32766, unique per filter and direction; lower first.
    #[arg(long)]
    number: i64,
    #[arg(long, value_enum)]
    action: Action,
    #[arg(long, value_enum, default_value = "ingress")]
    direction: Direction,
    /// any | tcp | udp | icmp | icmpv6 | sctp | 0..255
    #[arg(long)]
    protocol: Option<String>,
    /// Source CIDR (IPv4 or IPv6).
    #[arg(long)]
    source: Option<String>,
    /// Destination CIDR (IPv4 or IPv6).
    #[arg(long)]
    destination: Option<String>,
    /// "N" or "N-M"; needs tcp, udp or sctp.
    #[arg(long)]
    source_port: Option<String>,
    /// "N" or "N-M"; needs tcp, udp or sctp.
    #[arg(long)]
    destination_port: Option<String>,
    /// Outer VLAN id, 0..4095.
    #[arg(long)]
    vlan: Option<i64>,
}

impl AddArgs {
    /// The rule as `[[filter.rule]]` keys, for the daemon's validator.
    fn to_toml(&self) -> Result<String> {
        let mut t = toml::Table::new();
        t.insert("number".into(), self.number.into());
        t.insert("action".into(), self.action.to_string().into());
        t.insert("direction".into(), self.direction.to_string().into());
        let text = [
            ("protocol", &self.protocol),
            ("source", &self.source),
            ("destination", &self.destination),
            ("source_port", &self.source_port),
            ("destination_port", &self.destination_port),
        ];
        for (k, v) in text {
            if let Some(v) = v {
                // A protocol number is written as a number, as in the file.
                let value = match (k, v.parse::<i64>()) {
                    ("protocol", Ok(n)) => n.into(),
                    _ => v.clone().into(),
                };
                t.insert(k.into(), value);
            }
        }
        if let Some(v) = self.vlan {
            t.insert("vlan".into(), v.into());
        }
        toml::to_string(&t).context("writing the rule")
    }
}

fn print_rules(reply: &Reply) {
    for (source, n) in reply.rules.iter().flatten() {
        println!("source {source}: {n} rules in force (both directions)");
    }
}

pub fn main(a: Args) -> Result<ExitCode> {
    let mut client = a.daemon.client()?;
    match a.op {
        Op::List { json } => {
            let reply = client.request(&Request::RulesList)?;
            let filters = reply.filters.unwrap_or_default();
            if json {
                let objects = filters
                    .iter()
                    .map(|f| {
                        let rules = f
                            .rules
                            .iter()
                            .map(|r| {
                                // The daemon sends each rule as its TOML keys.
                                let rule = mirror_user::config::parse_rule(
                                    &r.replace(", ", "\n"),
                                    "listed rule",
                                )
                                .map_err(|e| anyhow::anyhow!("the daemon listed `{r}`: {e}"))?;
                                Ok(RuleView::from(&rule))
                            })
                            .collect::<Result<Vec<_>>>()?;
                        Ok(serde_json::json!({
                            "name": f.name,
                            "sessions": f.sessions,
                            "rules": rules,
                        }))
                    })
                    .collect::<Result<Vec<_>>>()?;
                println!("{}", serde_json::to_string_pretty(&objects)?);
            } else {
                for f in filters {
                    println!("filter {} (sessions: {})", f.name, f.sessions.join(", "));
                    for r in f.rules {
                        println!("    {r}");
                    }
                }
            }
        }
        Op::Add(add) => {
            let rule = add.to_toml()?;
            let reply = client
                .request(&Request::RulesAdd {
                    filter: add.filter.clone(),
                    rule: rule.clone(),
                })
                .map_err(|e| anyhow::anyhow!("{}", at_flags(&format!("{e:#}"), &rule)))?;
            print_rules(&reply);
        }
        Op::Delete {
            filter,
            number,
            direction,
        } => {
            let reply = client.request(&Request::RulesDelete {
                filter,
                number,
                direction,
            })?;
            print_rules(&reply);
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Points a validator message about the rule text `mirror rules add` sent
/// (`rule:LINE:COLUMN: …`) at the flag that line came from
/// (`--destination-port "22-1": …`): the user typed flags, not that text.
fn at_flags(message: &str, sent: &str) -> String {
    let lines: Vec<&str> = sent.lines().collect();
    let mut out = String::new();
    let mut rest = message;
    while let Some(at) = rest.find("rule:") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 5..];
        let mut parts = after.splitn(3, ':');
        let (line, col, tail) = (parts.next(), parts.next(), parts.next());
        let flag = match (line.and_then(|l| l.parse::<usize>().ok()), col, tail) {
            (Some(n), Some(c), Some(tail)) if c.chars().all(|c| c.is_ascii_digit()) => lines
                .get(n.wrapping_sub(1))
                .and_then(|l| l.split_once(" = "))
                .map(|(k, v)| (format!("--{} {v}", k.trim().replace('_', "-")), tail)),
            _ => None,
        };
        match flag {
            Some((flag, tail)) => {
                out.push_str(&flag);
                out.push(':');
                rest = tail;
            }
            None => {
                out.push_str("rule:");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// `mirror reload`.
pub fn reload(d: Daemon) -> Result<ExitCode> {
    let reply = d.client()?.request(&Request::Reload)?;
    if let Some(changes) = &reply.changes {
        println!("reloaded: {changes}");
    }
    print_rules(&reply);
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_rule_error_points_at_the_flag_not_at_the_generated_text() {
        let sent = "action = \"accept\"\ndestination_port = \"22-1\"\ndirection = \"ingress\"\nnumber = 5\nprotocol = \"tcp\"\n";
        let msg = "rule:2:20: destination_port: range \"22-1\" is reversed: write \"1-22\"; the running rules stay in force";
        assert_eq!(
            at_flags(msg, sent),
            "--destination-port \"22-1\": destination_port: range \"22-1\" is reversed: write \"1-22\"; the running rules stay in force"
        );
        // Nothing to point at: unchanged.
        assert_eq!(at_flags("no filter named `x`", sent), "no filter named `x`");
    }
}
