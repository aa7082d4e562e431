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
                println!("{}", serde_json::to_string_pretty(&filters)?);
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
            let reply = client.request(&Request::RulesAdd {
                filter: add.filter.clone(),
                rule,
            })?;
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

/// `mirror reload`.
pub fn reload(d: Daemon) -> Result<ExitCode> {
    let reply = d.client()?.request(&Request::Reload)?;
    print_rules(&reply);
    Ok(ExitCode::SUCCESS)
}
