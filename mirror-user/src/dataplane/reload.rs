//! What a reload keeps running. A reloaded file is applied as a diff, by
//! name: a source, target or target group whose definition is unchanged
//! keeps running (its threads, sockets, programs and counters untouched);
//! everything else of the running config stops and everything else of the
//! new one starts ([`super::engine::Engine::reload`]).
//!
//! A source is kept when its own settings, its sessions (every key, and the
//! names of their destinations) and every destination it sends to are kept;
//! its rules may change, and which filter a session uses (they are installed
//! live, as `mirror rules` does). A target is kept when its definition is unchanged,
//! and a group when its members are the same kept targets. What is coupled
//! goes together: a tap source and the interface target that may share its
//! UMEM (one is kept only with the other); a pcapng target, whose files
//! name every source's interface, only while the sources (names and
//! interfaces, in order) are the same; and while any pcapng target runs, a
//! source only at its place among the sources (its frames carry that index).

use std::collections::BTreeSet;

use crate::config::{Config, Dest, Session, TargetSpec};

/// Names of what a reload keeps running; the rest stops or starts.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Keep {
    pub sources: BTreeSet<String>,
    pub targets: BTreeSet<String>,
    pub groups: BTreeSet<String>,
}

/// A session with its indices replaced by names, for comparing across
/// configs. Its filter is not compared: a kept source's rules are installed
/// live, whichever filter its sessions use.
#[derive(Debug, PartialEq)]
struct Named<'a> {
    session: Session,
    dests: Vec<&'a str>,
}

fn named(c: &Config, s: usize) -> Named<'_> {
    let sess = &c.sessions[s];
    Named {
        session: Session {
            source: 0,
            filter: 0,
            targets: Vec::new(),
            ..sess.clone()
        },
        dests: sess.targets.iter().map(|&d| c.dest_name(d)).collect(),
    }
}

/// The sessions of source `s`, in kernel order, named.
fn sessions_named(c: &Config, s: usize) -> Vec<Named<'_>> {
    c.sessions_of(s).into_iter().map(|k| named(c, k)).collect()
}

fn interfaces(c: &Config) -> Vec<(&str, &str)> {
    c.sources
        .iter()
        .map(|s| (s.name.as_str(), s.interface.as_str()))
        .collect()
}

fn has_pcapng(c: &Config) -> bool {
    c.targets
        .iter()
        .any(|t| matches!(t.spec, TargetSpec::Pcapng(_)))
}

/// What of `old` (running) a reload to `new` keeps running.
pub(crate) fn keep(old: &Config, new: &Config) -> Keep {
    keep_but(old, new, &[])
}

/// [`keep`], restarting the sources named in `restart` whatever else (and
/// what is coupled to them).
pub(crate) fn keep_but(old: &Config, new: &Config, restart: &[String]) -> Keep {
    let same_sources = interfaces(old) == interfaces(new);
    let pcapng = has_pcapng(old) || has_pcapng(new);
    let old_target = |name: &str| old.targets.iter().position(|t| t.name == name);
    let old_source = |name: &str| old.sources.iter().position(|s| s.name == name);
    // Targets: the same definition (pcapng: and the same sources).
    let mut target_ok: Vec<bool> = new
        .targets
        .iter()
        .map(|t| {
            old_target(&t.name).is_some_and(|o| old.targets[o] == *t)
                && (same_sources || !matches!(t.spec, TargetSpec::Pcapng(_)))
        })
        .collect();
    // Sources: their settings, place (with pcapng) and sessions.
    let mut source_ok: Vec<bool> = new
        .sources
        .iter()
        .enumerate()
        .map(|(i, s)| {
            !restart.contains(&s.name)
                && old_source(&s.name).is_some_and(|o| {
                    old.sources[o] == *s
                        && (!pcapng || o == i)
                        && sessions_named(old, o) == sessions_named(new, i)
                })
        })
        .collect();
    let share_old = super::plan::share_picks(old);
    let share_new = super::plan::share_picks(new);
    let partner_name =
        |c: &Config, share: &[Option<usize>], t: usize| share[t].map(|s| c.sources[s].name.clone());
    let mut group_ok = vec![false; new.groups.len()];
    // Dependencies run both ways (a source needs its targets, a target its
    // UMEM partner): settle to a fixed point.
    loop {
        let before = (target_ok.clone(), source_ok.clone());
        for (g, grp) in new.groups.iter().enumerate() {
            group_ok[g] = old.groups.iter().any(|o| {
                o.name == grp.name
                    && o.members
                        .iter()
                        .map(|&m| &old.targets[m].name)
                        .eq(grp.members.iter().map(|&m| &new.targets[m].name))
            }) && grp.members.iter().all(|&m| target_ok[m]);
        }
        for (t, tgt) in new.targets.iter().enumerate() {
            if !target_ok[t] {
                continue;
            }
            let now = partner_name(new, &share_new, t);
            let was = old_target(&tgt.name).and_then(|o| partner_name(old, &share_old, o));
            let partner_running = now.as_ref().is_none_or(|n| {
                new.sources
                    .iter()
                    .position(|s| &s.name == n)
                    .is_some_and(|s| source_ok[s])
            });
            target_ok[t] = now == was && partner_running;
        }
        for (s, ok) in source_ok.iter_mut().enumerate() {
            if !*ok {
                continue;
            }
            let dests_ok = new.sessions_of(s).into_iter().all(|k| {
                new.sessions[k].targets.iter().all(|d| match *d {
                    Dest::Target(t) => target_ok[t],
                    Dest::Group(g) => group_ok[g],
                })
            });
            let shared_ok = share_new
                .iter()
                .enumerate()
                .all(|(t, p)| *p != Some(s) || target_ok[t]);
            *ok = dests_ok && shared_ok;
        }
        if (target_ok.clone(), source_ok.clone()) == before {
            break;
        }
    }
    let names = |ok: &[bool], name: &dyn Fn(usize) -> String| {
        ok.iter()
            .enumerate()
            .filter(|(_, &k)| k)
            .map(|(i, _)| name(i))
            .collect()
    };
    Keep {
        sources: names(&source_ok, &|i| new.sources[i].name.clone()),
        targets: names(&target_ok, &|i| new.targets[i].name.clone()),
        groups: names(&group_ok, &|i| new.groups[i].name.clone()),
    }
}

/// `config` with only the sources, targets and groups `keep` names (and the
/// sessions of those sources), indices renumbered: what runs between a
/// reload's stopping and its starting. Every session kept must send only to
/// kept targets and groups, which [`keep`] ensures.
pub(crate) fn subset(config: &Config, keep: &Keep) -> Config {
    fn flags<'a>(names: impl Iterator<Item = &'a String>, kept: &BTreeSet<String>) -> Vec<bool> {
        names.map(|n| kept.contains(n)).collect()
    }
    let mut out = config.clone();
    out.retain_parts(
        &flags(config.sources.iter().map(|s| &s.name), &keep.sources),
        &flags(config.targets.iter().map(|t| &t.name), &keep.targets),
        &flags(config.groups.iter().map(|g| &g.name), &keep.groups),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;

    const BASE: &str = r#"
[[source]]
name = "feed"
interface = "feed0"
share_umem = false
[[source]]
name = "live"
interface = "eth1"
mode = "copy"
[[filter]]
name = "all"
[[filter.rule]]
number = 100
action = "accept"
direction = "ingress"
[[target]]
name = "ids0"
kind = "interface"
interface = "ids0"
[[target]]
name = "ids1"
kind = "interface"
interface = "ids1"
[[target]]
name = "vx"
kind = "vxlan"
remote = "192.0.2.9"
[[target_group]]
name = "pair"
members = ["ids1", "vx"]
[[session]]
name = "a"
source = "feed"
filter = "all"
targets = ["ids0"]
[[session]]
name = "b"
source = "live"
filter = "all"
targets = ["pair"]
"#;

    fn cfg(text: &str) -> Config {
        let mut c = parse(text, "t.toml").unwrap_or_else(|e| panic!("{e}\n{text}"));
        c.prune_unused_targets();
        c
    }

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_same_file_keeps_everything() {
        let k = keep(&cfg(BASE), &cfg(BASE));
        assert_eq!(k.sources, set(&["feed", "live"]));
        assert_eq!(k.targets, set(&["ids0", "ids1", "vx"]));
        assert_eq!(k.groups, set(&["pair"]));
    }

    #[test]
    fn a_changed_rule_keeps_everything_a_changed_session_restarts_only_its_source() {
        let rules = BASE.replace(
            "action = \"accept\"",
            "action = \"accept\"\nprotocol = \"udp\"",
        );
        assert_eq!(keep(&cfg(BASE), &cfg(&rules)), keep(&cfg(BASE), &cfg(BASE)));
        let sampled = BASE.replace(
            "name = \"b\"\nsource = \"live\"",
            "name = \"b\"\nsample = 10\nsource = \"live\"",
        );
        let k = keep(&cfg(BASE), &cfg(&sampled));
        assert_eq!(k.sources, set(&["feed"]));
        assert_eq!(k.targets, set(&["ids0", "ids1", "vx"]), "targets run on");
        assert_eq!(k.groups, set(&["pair"]));
    }

    #[test]
    fn a_changed_target_restarts_its_group_and_every_source_sending_to_it() {
        let moved = BASE.replace("remote = \"192.0.2.9\"", "remote = \"192.0.2.10\"");
        let k = keep(&cfg(BASE), &cfg(&moved));
        assert_eq!(k.sources, set(&["feed"]));
        assert_eq!(k.targets, set(&["ids0", "ids1"]));
        assert!(k.groups.is_empty());
    }

    #[test]
    fn an_added_session_restarts_its_source_and_an_added_source_keeps_the_others() {
        let added = format!(
            "{BASE}\n[[session]]\nname = \"c\"\nsource = \"feed\"\nfilter = \"all\"\ntargets = [\"vx\"]\n"
        );
        let k = keep(&cfg(BASE), &cfg(&added));
        assert_eq!(k.sources, set(&["live"]));
        assert_eq!(k.targets, set(&["ids0", "ids1", "vx"]));
        let third = format!(
            "{BASE}\n[[source]]\nname = \"new\"\ninterface = \"feed9\"\n\
             [[session]]\nname = \"c\"\nsource = \"new\"\nfilter = \"all\"\ntargets = [\"vx\"]\n"
        );
        let k = keep(&cfg(BASE), &cfg(&third));
        assert_eq!(k.sources, set(&["feed", "live"]));
    }

    #[test]
    fn a_removed_source_takes_its_unused_targets_and_a_share_partner_with_it() {
        // Without session a, ids0 is unused (pruned) and feed has no session.
        let text = BASE.replace(
            "[[session]]\nname = \"a\"\nsource = \"feed\"\nfilter = \"all\"\ntargets = [\"ids0\"]\n",
            "",
        );
        let k = keep(&cfg(BASE), &cfg(&text));
        assert_eq!(k.targets, set(&["ids1", "vx"]));
        // ids0 may share feed's UMEM once share_umem is not off: then a
        // change of the target restarts the source too.
        let shared = BASE.replace("share_umem = false\n", "");
        let resized = shared.replace(
            "name = \"ids0\"\nkind = \"interface\"",
            "name = \"ids0\"\nqueue_size = 8192\nkind = \"interface\"",
        );
        let k = keep(&cfg(&shared), &cfg(&resized));
        assert_eq!(k.sources, set(&["live"]));
        assert_eq!(k.targets, set(&["ids1", "vx"]));
    }

    #[test]
    fn pcapng_targets_pin_the_sources_in_place() {
        let pcap = format!(
            "{BASE}\n[[target]]\nname = \"cap\"\nkind = \"pcapng\"\npath = \"/tmp/x.pcapng\"\n\
             [[session]]\nname = \"p\"\nsource = \"live\"\nfilter = \"all\"\ntargets = [\"cap\"]\n"
        );
        // A source added at the end: the files' interface list changes.
        let more = format!("{pcap}\n[[source]]\nname = \"z\"\ninterface = \"z0\"\n");
        let k = keep(&cfg(&pcap), &cfg(&more));
        assert!(!k.targets.contains("cap"), "{k:?}");
        // ... and the source writing to it with it; the others run on.
        assert_eq!(k.sources, set(&["feed"]));
        assert_eq!(k.targets, set(&["ids0", "ids1", "vx"]));
    }

    #[test]
    fn the_subset_renumbers_what_is_kept() {
        let c = cfg(BASE);
        let k = Keep {
            sources: set(&["live"]),
            targets: set(&["ids1", "vx"]),
            groups: set(&["pair"]),
        };
        let s = subset(&c, &k);
        assert_eq!(s.sources.len(), 1);
        assert_eq!(s.sources[0].name, "live");
        assert_eq!(
            s.targets
                .iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>(),
            ["ids1", "vx"]
        );
        assert_eq!(s.groups[0].members, [0, 1]);
        assert_eq!(s.sessions.len(), 1);
        assert_eq!(s.sessions[0].name, "b");
        assert_eq!(s.sessions[0].source, 0);
        assert_eq!(s.sessions[0].targets, [Dest::Group(0)]);
        assert_eq!(keep(&s, &c).sources, set(&["live"]));
    }
}
