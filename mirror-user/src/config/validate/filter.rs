//! Validation of the filter section.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde_spanned::Spanned;

use super::Validator;
use crate::config::model::{Direction, Rule, RULE_NUMBERS};
use crate::config::raw::RawRule;
use crate::config::values::{parse_ports, parse_protocol};

impl Validator<'_> {
    pub(super) fn rules(&mut self, raw: &[Spanned<RawRule>]) -> Vec<Rule> {
        let mut seen: HashMap<(Direction, i64), ()> = HashMap::new();
        let mut rules = Vec::new();
        for r in raw {
            let key = (r.get_ref().direction, *r.get_ref().number.get_ref());
            if seen.insert(key, ()).is_some() {
                self.error(
                    r.get_ref().number.span(),
                    format!(
                        "duplicate rule number {} for direction {}: numbers are unique per filter and direction",
                        key.1, key.0
                    ),
                );
                continue;
            }
            if let Some(rule) = self.rule(r.get_ref()) {
                rules.push(rule);
            }
        }
        rules.sort_by_key(|r| r.number);
        rules
    }

    pub(in crate::config) fn rule(&mut self, r: &RawRule) -> Option<Rule> {
        let number: Option<u16> = self.int_in(&r.number, RULE_NUMBERS, "number");
        let protocol = match &r.protocol {
            None => None,
            Some(p) => match parse_protocol(p.get_ref()) {
                Ok(p) => p,
                Err(msg) => {
                    self.error(p.span(), msg);
                    return None;
                }
            },
        };
        let source = match &r.source {
            None => None,
            Some(s) => Some(self.cidr(s, "source")?),
        };
        let destination = match &r.destination {
            None => None,
            Some(d) => Some(self.cidr(d, "destination")?),
        };
        if let (Some(s), Some(d)) = (&source, &destination) {
            if s.addr().is_ipv4() != d.addr().is_ipv4() {
                self.error(
                    r.destination.as_ref().map_or(0..0, |d| d.span()),
                    "source and destination are of different IP families: such a rule could never match",
                );
                return None;
            }
        }
        let mut ports = [None, None];
        for (i, (field, raw)) in [
            ("source_port", &r.source_port),
            ("destination_port", &r.destination_port),
        ]
        .into_iter()
        .enumerate()
        {
            let Some(raw) = raw else { continue };
            if !protocol.is_some_and(|p| matches!(p, 6 | 17 | 132)) {
                self.error(
                    raw.span(),
                    format!("{field} needs protocol = \"tcp\", \"udp\" or \"sctp\": other protocols have no ports"),
                );
                return None;
            }
            match parse_ports(raw.get_ref()) {
                Ok(p) => ports[i] = Some(p),
                Err(msg) => {
                    self.error(raw.span(), format!("{field}: {msg}"));
                    return None;
                }
            }
        }
        let vlan = match &r.vlan {
            None => None,
            Some(v) => Some(self.int_in::<u16>(v, 0..=4095, "vlan")?),
        };
        Some(Rule {
            number: number?,
            action: r.action,
            direction: r.direction,
            protocol,
            source,
            destination,
            source_port: ports[0],
            destination_port: ports[1],
            vlan,
        })
    }

    pub(super) fn cidr(&mut self, s: &Spanned<String>, field: &str) -> Option<IpNet> {
        let text = s.get_ref();
        let parsed = text
            .parse::<IpNet>()
            .or_else(|_| text.parse::<IpAddr>().map(IpNet::from));
        match parsed {
            Ok(net) => Some(net.trunc()),
            Err(_) => {
                self.error(
                    s.span(),
                    format!("{field} = \"{text}\" is not a CIDR: expected e.g. \"10.0.0.0/8\" or \"2001:db8::/32\""),
                );
                None
            }
        }
    }
}
