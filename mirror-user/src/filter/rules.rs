//! Live rule changes on a config: what `mirror rules add|delete` and a reload
//! may change, checked before anything reaches the kernel. The engine applies
//! the result atomically ([`crate::dataplane::engine::Engine::update`]).

use serde::{Deserialize, Serialize};

use crate::config::{Config, Direction, Rule};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RulesError {
    #[error("no filter named `{name}`; filters: {known}")]
    NoFilter { name: String, known: String },
    #[error(
        "filter `{filter}` already has rule {number} for direction {direction}: \
         numbers are unique per filter and direction (delete it first)"
    )]
    Duplicate {
        filter: String,
        number: u16,
        direction: Direction,
    },
    #[error("filter `{filter}` has no rule {number} for direction {direction}")]
    NoRule {
        filter: String,
        number: u16,
        direction: Direction,
    },
    #[error(
        "a reload may change filters and which filter a session uses; \
         {what} changed too: restart the daemon to apply that"
    )]
    NotReloadable { what: String },
}

/// A rule as `mirror rules list --json` shows it: its fields by name,
/// omitted ones (any) left out; the protocol by name where it has one.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RuleView {
    pub number: u16,
    pub action: String,
    pub direction: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination_port: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
}

impl From<&Rule> for RuleView {
    fn from(r: &Rule) -> RuleView {
        RuleView {
            number: r.number,
            action: r.action.to_string(),
            direction: r.direction.to_string(),
            protocol: r.protocol.map(|p| match crate::config::protocol_name(p) {
                Some(name) => name.into(),
                None => p.into(),
            }),
            source: r.source.map(|n| n.to_string()),
            destination: r.destination.map(|n| n.to_string()),
            source_port: r.source_port.map(|p| p.to_string()),
            destination_port: r.destination_port.map(|p| p.to_string()),
            vlan: r.vlan,
        }
    }
}

/// A filter as `mirror rules list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FilterView {
    pub name: String,
    /// Sessions using this filter.
    pub sessions: Vec<String>,
    /// Each rule as the keys of its `[[filter.rule]]` table, in number order.
    pub rules: Vec<String>,
}

fn filter_index(config: &Config, name: &str) -> Result<usize, RulesError> {
    config
        .filters
        .iter()
        .position(|f| f.name == name)
        .ok_or_else(|| RulesError::NoFilter {
            name: name.to_string(),
            known: config
                .filters
                .iter()
                .map(|f| format!("`{}`", f.name))
                .collect::<Vec<_>>()
                .join(", "),
        })
}

/// Adds `rule` to filter `filter`, keeping the rules in number order.
pub fn add(config: &mut Config, filter: &str, rule: Rule) -> Result<(), RulesError> {
    let i = filter_index(config, filter)?;
    let f = &mut config.filters[i];
    if f.rules
        .iter()
        .any(|r| r.number == rule.number && r.direction == rule.direction)
    {
        return Err(RulesError::Duplicate {
            filter: filter.to_string(),
            number: rule.number,
            direction: rule.direction,
        });
    }
    let at = f.rules.partition_point(|r| r.number <= rule.number);
    f.rules.insert(at, rule);
    Ok(())
}

/// Deletes rule `number` of `direction` from filter `filter`.
pub fn delete(
    config: &mut Config,
    filter: &str,
    number: u16,
    direction: Direction,
) -> Result<Rule, RulesError> {
    let i = filter_index(config, filter)?;
    let f = &mut config.filters[i];
    let at = f
        .rules
        .iter()
        .position(|r| r.number == number && r.direction == direction)
        .ok_or_else(|| RulesError::NoRule {
            filter: filter.to_string(),
            number,
            direction,
        })?;
    Ok(f.rules.remove(at))
}

/// The filters of `config` as `mirror rules list` shows them.
pub fn list(config: &Config) -> Vec<FilterView> {
    config
        .filters
        .iter()
        .enumerate()
        .map(|(i, f)| FilterView {
            name: f.name.clone(),
            sessions: config
                .sessions
                .iter()
                .filter(|s| s.filter == i)
                .map(|s| s.name.clone())
                .collect(),
            rules: f.rules.iter().map(Rule::to_toml_keys).collect(),
        })
        .collect()
}

/// Checks that `new` differs from `running` only where a reload can apply it:
/// the filters, and which filter each session uses.
pub(crate) fn check_reloadable(running: &Config, new: &Config) -> Result<(), RulesError> {
    let mut changed = Vec::new();
    if running.daemon != new.daemon {
        changed.push("[daemon]");
    }
    if running.sources != new.sources {
        changed.push("the sources");
    }
    if running.targets != new.targets {
        changed.push("the targets");
    }
    let strip = |c: &Config| {
        c.sessions
            .iter()
            .map(|s| (s.name.clone(), s.source, s.targets.clone(), s.priority))
            .collect::<Vec<_>>()
    };
    if strip(running) != strip(new) {
        changed.push("the sessions");
    }
    if changed.is_empty() {
        Ok(())
    } else {
        Err(RulesError::NotReloadable {
            what: changed.join(", "),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{parse, parse_rule};

    const CONFIG: &str = r#"
[[source]]
name = "s"
interface = "feed0"
[[filter]]
name = "f"
[[filter.rule]]
number = 100
action = "reject"
direction = "ingress"
protocol = "tcp"
destination_port = "443"
[[filter.rule]]
number = 200
action = "accept"
direction = "ingress"
[[target]]
name = "t"
kind = "interface"
interface = "tgt0"
[[session]]
name = "a"
source = "s"
filter = "f"
targets = ["t"]
"#;

    #[test]
    fn added_rule_lands_in_number_order_and_lists_back() {
        let mut c = parse(CONFIG, "c").expect("valid");
        let r = parse_rule(
            "number = 150\naction = \"accept\"\ndirection = \"ingress\"\nprotocol = \"udp\"\nsource = \"10.0.0.0/8\"\ndestination_port = \"53\"",
            "rule",
        )
        .expect("valid rule");
        add(&mut c, "f", r.clone()).expect("added");
        let numbers: Vec<u16> = c.filters[0].rules.iter().map(|r| r.number).collect();
        assert_eq!(numbers, [100, 150, 200]);
        let view = list(&c);
        assert_eq!(view[0].sessions, ["a"]);
        assert_eq!(
            view[0].rules[1],
            "number = 150, action = \"accept\", direction = \"ingress\", protocol = \"udp\", \
             source = \"10.0.0.0/8\", destination_port = \"53\""
        );
        // What list shows parses back to the same rule.
        let back = parse_rule(&view[0].rules[1].replace(", ", "\n"), "listed").expect("parses");
        assert_eq!(back, r);
        // As JSON: an object with the fields by name.
        assert_eq!(
            serde_json::to_value(RuleView::from(&back)).expect("json"),
            serde_json::json!({
                "number": 150, "action": "accept", "direction": "ingress",
                "protocol": "udp", "source": "10.0.0.0/8", "destination_port": "53"
            })
        );
        let mut odd = back.clone();
        odd.protocol = Some(47);
        assert_eq!(
            serde_json::to_value(RuleView::from(&odd)).expect("json")["protocol"],
            47
        );
    }

    #[test]
    fn duplicate_and_missing_rules_are_refused() {
        let mut c = parse(CONFIG, "c").expect("valid");
        let dup = parse_rule(
            "number = 100\naction = \"accept\"\ndirection = \"ingress\"",
            "r",
        )
        .expect("valid rule");
        assert!(matches!(
            add(&mut c, "f", dup.clone()),
            Err(RulesError::Duplicate { number: 100, .. })
        ));
        let mut egress = dup;
        egress.direction = Direction::Egress;
        add(&mut c, "f", egress).expect("same number, other direction");
        let any = c.filters[0].rules[0].clone();
        assert!(matches!(
            add(&mut c, "nope", any),
            Err(RulesError::NoFilter { .. })
        ));
        assert_eq!(
            delete(&mut c, "f", 300, Direction::Ingress),
            Err(RulesError::NoRule {
                filter: "f".into(),
                number: 300,
                direction: Direction::Ingress
            })
        );
        assert_eq!(
            delete(&mut c, "f", 100, Direction::Ingress).map(|r| r.number),
            Ok(100)
        );
    }

    #[test]
    fn bad_live_rule_reports_position_and_field() {
        let err = parse_rule(
            "number = 5\naction = \"accept\"\ndirection = \"ingress\"\nprotocol = \"icmp\"\ndestination_port = \"80\"",
            "rule",
        )
        .expect_err("ports need tcp/udp/sctp");
        assert!(
            err.to_string()
                .starts_with("rule:5:20: destination_port needs protocol"),
            "{err}"
        );
        let err = parse_rule("number = 5\naction = \"accept\"\ndirection = \"ingress\"\nsource_port = \"9-3\"\nprotocol = \"tcp\"", "rule")
            .expect_err("reversed range");
        assert!(err.to_string().contains("rule:4:"), "{err}");
    }

    #[test]
    fn reload_may_change_filters_only() {
        let running = parse(CONFIG, "c").expect("valid");
        let new = parse(&CONFIG.replace("\"443\"", "\"8443\""), "c").expect("valid");
        check_reloadable(&running, &new).expect("filters may change");
        let new = parse(&CONFIG.replace("tgt0", "tgt1"), "c").expect("valid");
        assert_eq!(
            check_reloadable(&running, &new),
            Err(RulesError::NotReloadable {
                what: "the targets".into()
            })
        );
    }

    #[test]
    fn delete_takes_the_rule_of_the_direction_asked_for() {
        let mut c = parse(CONFIG, "t.toml").expect("valid");
        let egress = parse_rule(
            "number = 200\naction = \"reject\"\ndirection = \"egress\"",
            "rule",
        )
        .expect("a rule");
        add(&mut c, "f", egress).expect("added");
        let gone = delete(&mut c, "f", 200, Direction::Egress).expect("deleted");
        assert_eq!((gone.number, gone.direction), (200, Direction::Egress));
        let left: Vec<(u16, Direction)> = c.filters[0]
            .rules
            .iter()
            .map(|r| (r.number, r.direction))
            .collect();
        assert_eq!(left, [(100, Direction::Ingress), (200, Direction::Ingress)]);
        assert!(
            delete(&mut c, "f", 200, Direction::Egress).is_err(),
            "only one was there"
        );
    }
}
