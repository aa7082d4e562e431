//! Compiles a source's filters into the kernel's bit-vector rule set.
//!
//! The kernel classifier (`mirror-ebpf/src/bpf/classify.h`) does not walk the
//! rules. For each of six fields (L3 family + protocol, outer VLAN, source
//! port, destination port, source address, destination address) it looks up
//! the *class* of the frame's value: the set of rules whose constraint on that
//! field the value satisfies, as a bitmap over the rules in evaluation order.
//! The AND of the six bitmaps is the set of matching rules; the lowest set bit
//! is the first match. Cost per frame: six class lookups, six bitmap lookups
//! and a scan of the 64-rule words in which every field still has a
//! candidate (found through a one-bit-per-word summary), so it stays nearly
//! flat from 1 to [`MAX_RULES`] rules.
//!
//! Classes are computed here, once per rule set:
//! - ports: the rules' range boundaries cut 0..=65535 into elementary
//!   intervals, each with one bitmap (at most 2n + 1 of them);
//! - addresses: a multibit trie with one byte per level (at most 4 lookups
//!   for IPv4, 16 for IPv6, fewer when the rule prefixes are short), leaves
//!   pushed down: each entry is the class of the longest rule prefix that
//!   contains its whole range (that prefix's containing rules are exactly the
//!   rules containing any address in the range), or a child node when a
//!   longer rule prefix lies inside it. The kernel's LPM trie was measured
//!   first: it walks one node per nesting level of the prefixes, 230 ns at 42
//!   levels, where this costs one lookup per byte;
//! - L3 (family x protocol, 771 slots) and VLAN (4097 slots): small arrays.
//!
//! Identical bitmaps share one class. [`RuleSet::classify`] evaluates the
//! tables the way the kernel does, so the tables can be checked against the
//! reference classifier without a kernel.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use mirror_ebpf::mirror::types::{
    mirror_constant as CONST, mirror_index as IX, mirror_rule_word as RW,
};

use crate::config::{Action, Config, Direction, Filter, Rule};
use crate::filter::classify::FrameView;

pub(crate) const MAX_RULES: usize = mirror_ebpf::limits::MAX_RULES as usize;
pub(crate) const BITMAP_WORDS: usize = 256;
pub(crate) const SUMMARY_WORDS: usize = BITMAP_WORDS / 64;
/// `struct mirror_bitmap`: summary words, then rule words.
pub(crate) const BITMAP_U64S: usize = SUMMARY_WORDS + BITMAP_WORDS;
/// A leaf entry of the address trie (`MIRROR_ADDR_LEAF`): the rest is a class.
const ADDR_LEAF: u32 = 1 << 31;

const _: () = assert!(BITMAP_WORDS * 64 == MAX_RULES);

const ADDR_SRC: u8 = 0;
const ADDR_DST: u8 = 1;
/// L3 family numbers of abi.h: 0 non-IP, 1 IPv4, 2 IPv6.
const FAM_V4: u8 = 1;
const FAM_V6: u8 = 2;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RuleSetError {
    #[error("{count} rules for one source and direction; at most {MAX_RULES} are supported")]
    TooManyRules { count: usize },
    #[error("{count} sessions on one source; at most 64 are supported")]
    TooManySessions { count: usize },
}

/// One rule set in the kernel's layout, ready to be written to the maps.
#[derive(Debug, Clone)]
pub struct RuleSet {
    /// Rules in evaluation order.
    pub rules: usize,
    /// The index array (`enum mirror_index`), `MIRROR_IX_SLOTS` values.
    pub index: Vec<u32>,
    /// Address trie nodes (`struct mirror_addr_node`): 0..4 are the roots of
    /// (source, IPv4), (source, IPv6), (destination, IPv4), (destination, IPv6).
    pub addr_nodes: Vec<[u32; 256]>,
    /// Class bitmaps, `BITMAP_U64S` words each (`struct mirror_bitmap`).
    pub bitmaps: Vec<[u64; BITMAP_U64S]>,
}

/// A bitmap over the rules, without its summary.
type Bits = Vec<u64>;

/// Deduplicates bitmaps into classes.
#[derive(Default)]
struct Classes {
    ids: HashMap<Bits, u32>,
    bitmaps: Vec<[u64; BITMAP_U64S]>,
}

impl Classes {
    fn id(&mut self, bits: &Bits) -> u32 {
        if let Some(&id) = self.ids.get(bits) {
            return id;
        }
        let id = self.bitmaps.len() as u32;
        let mut b = [0u64; BITMAP_U64S];
        for (w, &v) in bits.iter().enumerate() {
            b[SUMMARY_WORDS + w] = v;
            if v != 0 {
                b[w / 64] |= 1 << (w % 64);
            }
        }
        self.bitmaps.push(b);
        self.ids.insert(bits.clone(), id);
        id
    }
}

fn set(bits: &mut Bits, i: usize) {
    bits[i / 64] |= 1 << (i % 64);
}

/// True when the rule constrains no field: it matches every frame.
fn matches_everything(r: &Rule) -> bool {
    r.protocol.is_none()
        && r.source.is_none()
        && r.destination.is_none()
        && r.source_port.is_none()
        && r.destination_port.is_none()
        && r.vlan.is_none()
}

/// MIRROR_IX_CONSTANT: when the first rule of each session up to the
/// deciding one matches every frame, the verdict is the same for all frames.
fn constant_verdict(rules: &[(&Rule, u8)]) -> u32 {
    let mut i = 0;
    while let Some(&(r, session)) = rules.get(i) {
        if !matches_everything(r) {
            return CONST::MIRROR_CONST_NONE.0;
        }
        if r.action == Action::Accept {
            return CONST::MIRROR_CONST_SESSION.0 + u32::from(session);
        }
        // Rejects everything: this session mirrors nothing; on to the next.
        while rules.get(i).is_some_and(|&(_, s)| s == session) {
            i += 1;
        }
    }
    CONST::MIRROR_CONST_NOTHING.0
}

fn needs_ip(r: &Rule) -> bool {
    r.protocol.is_some()
        || r.source.is_some()
        || r.destination.is_some()
        || r.source_port.is_some()
        || r.destination_port.is_some()
}

/// The L3 family a rule's CIDRs pin it to, if any.
fn rule_family(r: &Rule) -> Option<u8> {
    [&r.source, &r.destination]
        .into_iter()
        .flatten()
        .next()
        .map(|n| match n {
            IpNet::V4(_) => FAM_V4,
            IpNet::V6(_) => FAM_V6,
        })
}

/// The rules of `direction` of the given filters (sessions in priority
/// order), each with its session index.
pub(crate) fn ordered<'a>(filters: &[&'a Filter], direction: Direction) -> Vec<(&'a Rule, u8)> {
    let mut out = Vec::new();
    for (s, f) in filters.iter().enumerate() {
        for r in f.rules.iter().filter(|r| r.direction == direction) {
            out.push((r, s as u8));
        }
    }
    out
}

/// The filters of `source`'s sessions in evaluation order.
pub fn source_filters(config: &Config, source: usize) -> Vec<&Filter> {
    config
        .sessions_of(source)
        .into_iter()
        .map(|s| &config.filters[config.sessions[s].filter])
        .collect()
}

impl RuleSet {
    /// Builds the rule set of `filters` (sessions in priority order) for `direction`.
    pub fn build(filters: &[&Filter], direction: Direction) -> Result<RuleSet, RuleSetError> {
        if filters.len() > mirror_ebpf::limits::MAX_SESSIONS as usize {
            return Err(RuleSetError::TooManySessions {
                count: filters.len(),
            });
        }
        let rules = ordered(filters, direction);
        Self::from_ordered(&rules)
    }

    /// Builds the rule set of `rules`, already in evaluation order, each with
    /// its session index (non-decreasing).
    pub(crate) fn from_ordered(rules: &[(&Rule, u8)]) -> Result<RuleSet, RuleSetError> {
        let n = rules.len();
        if n > MAX_RULES {
            return Err(RuleSetError::TooManyRules { count: n });
        }
        let mut b = Builder {
            rules,
            classes: Classes::default(),
            index: vec![0u32; IX::MIRROR_IX_SLOTS.0 as usize],
            nodes: vec![[0; 256]; 4],
        };
        b.l3();
        b.vlans();
        b.ports();
        b.addresses();
        b.rule_words();
        Ok(RuleSet {
            rules: n,
            index: b.index,
            addr_nodes: b.nodes,
            bitmaps: b.classes.bitmaps,
        })
    }

    /// Bytes of kernel memory the maps of this set hold (values only).
    pub fn memory_bytes(&self) -> usize {
        self.index.len() * 4 + self.addr_nodes.len() * 1024 + self.bitmaps.len() * 8 * BITMAP_U64S
    }

    /// Evaluates the tables the way the kernel does: the session that
    /// mirrors a frame described by `f`, or `None`.
    pub fn classify(&self, f: &FrameView) -> Option<usize> {
        match self.index[IX::MIRROR_IX_CONSTANT.0 as usize] {
            c if c == CONST::MIRROR_CONST_NONE.0 => {}
            c if c == CONST::MIRROR_CONST_NOTHING.0 => return None,
            c => return Some((c - CONST::MIRROR_CONST_SESSION.0) as usize),
        }
        let fam = match f.ipv4 {
            Some(true) => 1usize,
            Some(false) => 2,
            None => 0,
        };
        let proto = f.proto.map_or(256, usize::from);
        let slot = |ix: IX| ix.0 as usize;
        let mut cls = vec![
            self.index[slot(IX::MIRROR_IX_L3) + fam * 257 + proto],
            self.index[slot(IX::MIRROR_IX_VLAN) + f.vlan.map_or(4096, usize::from)],
            self.index[slot(IX::MIRROR_IX_SPORT) + f.ports.map_or(65536, |p| usize::from(p.0))],
            self.index[slot(IX::MIRROR_IX_DPORT) + f.ports.map_or(65536, |p| usize::from(p.1))],
        ];
        for (field, unknown, addr) in [
            (ADDR_SRC, IX::MIRROR_IX_SRC_UNKNOWN, f.addrs.map(|a| a.0)),
            (ADDR_DST, IX::MIRROR_IX_DST_UNKNOWN, f.addrs.map(|a| a.1)),
        ] {
            cls.push(match addr {
                None => self.index[slot(unknown)],
                Some(a) => self.addr_lookup(field, a)?,
            });
        }
        let words = self.index[slot(IX::MIRROR_IX_WORDS)] as usize;
        let mut floor = 0usize;
        while floor < words * 64 {
            let w = floor / 64;
            let mut x = cls.iter().fold(!0u64, |acc, &c| {
                acc & self.bitmaps[c as usize][SUMMARY_WORDS + w]
            });
            x &= !0u64 << (floor % 64);
            if x == 0 {
                floor = (w + 1) * 64;
                continue;
            }
            let rule = w * 64 + x.trailing_zeros() as usize;
            let rw = self.index[slot(IX::MIRROR_IX_RULES) + rule];
            if rw & RW::MIRROR_RW_ACCEPT.0 != 0 {
                return Some(
                    ((rw >> RW::MIRROR_RW_SESSION_SHIFT.0) & RW::MIRROR_RW_SESSION_MASK.0) as usize,
                );
            }
            floor = (rw & RW::MIRROR_RW_NEXT_MASK.0) as usize;
        }
        None
    }

    fn addr_lookup(&self, field: u8, addr: IpAddr) -> Option<u32> {
        let (bytes, root) = match addr {
            IpAddr::V4(a) => (a.octets().to_vec(), usize::from(field) * 2),
            IpAddr::V6(a) => (a.octets().to_vec(), usize::from(field) * 2 + 1),
        };
        let mut node = root;
        for b in bytes {
            let e = self.addr_nodes.get(node)?[usize::from(b)];
            if e & ADDR_LEAF != 0 {
                return Some(e & !ADDR_LEAF);
            }
            node = e as usize;
        }
        None
    }
}

/// What [`RuleSet::from_ordered`] fills, one table at a time.
struct Builder<'r> {
    rules: &'r [(&'r Rule, u8)],
    classes: Classes,
    index: Vec<u32>,
    /// The address tries' nodes (the first four are the roots).
    nodes: Vec<[u32; 256]>,
}

impl Builder<'_> {
    fn empty(&self) -> Bits {
        vec![0; BITMAP_WORDS]
    }

    /// The rules `constrained` says nothing about.
    fn base(&self, constrained: impl Fn(&Rule) -> bool) -> Bits {
        let mut b = self.empty();
        for (i, (r, _)) in self.rules.iter().enumerate() {
            if !constrained(r) {
                set(&mut b, i);
            }
        }
        b
    }

    /// L3: family x protocol.
    fn l3(&mut self) {
        let l3 = IX::MIRROR_IX_L3.0 as usize;
        for fam in 0..3u8 {
            for proto in 0..=256u16 {
                let mut b = self.empty();
                for (i, (r, _)) in self.rules.iter().enumerate() {
                    let ok = !needs_ip(r)
                        || (fam != 0
                            && rule_family(r).is_none_or(|f| f == fam)
                            && r.protocol.is_none_or(|p| u16::from(p) == proto));
                    if ok {
                        set(&mut b, i);
                    }
                }
                self.index[l3 + usize::from(fam) * 257 + usize::from(proto)] = self.classes.id(&b);
            }
        }
    }

    /// VLAN: rules without a VLAN, plus those naming this one.
    fn vlans(&mut self) {
        let vlan_base = self.base(|r| r.vlan.is_some());
        let vlan_any = self.classes.id(&vlan_base);
        let vix = IX::MIRROR_IX_VLAN.0 as usize;
        self.index[vix..=vix + 4096].fill(vlan_any);
        let mut by_vlan: HashMap<u16, Vec<usize>> = HashMap::new();
        for (i, (r, _)) in self.rules.iter().enumerate() {
            if let Some(v) = r.vlan {
                by_vlan.entry(v).or_default().push(i);
            }
        }
        for (v, members) in by_vlan {
            let mut b = vlan_base.clone();
            for i in members {
                set(&mut b, i);
            }
            self.index[vix + usize::from(v)] = self.classes.id(&b);
        }
    }

    /// Ports: elementary intervals.
    fn ports(&mut self) {
        for (slot, pick) in [
            (
                IX::MIRROR_IX_SPORT.0 as usize,
                (|r: &Rule| r.source_port) as fn(&Rule) -> _,
            ),
            (IX::MIRROR_IX_DPORT.0 as usize, |r: &Rule| {
                r.destination_port
            }),
        ] {
            let unconstrained = self.base(|r| pick(r).is_some());
            self.index[slot + 65536] = self.classes.id(&unconstrained);
            // Events: at port p, rules start (+) or end (-).
            let mut starts: Vec<(u32, usize)> = Vec::new();
            let mut ends: Vec<(u32, usize)> = Vec::new();
            let mut cuts = vec![0u32, 65536];
            for (i, (r, _)) in self.rules.iter().enumerate() {
                if let Some(p) = pick(r) {
                    starts.push((u32::from(p.lo), i));
                    ends.push((u32::from(p.hi) + 1, i));
                    cuts.push(u32::from(p.lo));
                    cuts.push(u32::from(p.hi) + 1);
                }
            }
            cuts.sort_unstable();
            cuts.dedup();
            starts.sort_unstable();
            ends.sort_unstable();
            let (mut si, mut ei) = (0, 0);
            let mut cur = unconstrained;
            for pair in cuts.windows(2) {
                let (lo, hi) = (pair[0], pair[1]);
                while ei < ends.len() && ends[ei].0 <= lo {
                    let i = ends[ei].1;
                    cur[i / 64] &= !(1 << (i % 64));
                    ei += 1;
                }
                while si < starts.len() && starts[si].0 <= lo {
                    set(&mut cur, starts[si].1);
                    si += 1;
                }
                let id = self.classes.id(&cur);
                self.index[slot + lo as usize..slot + hi as usize].fill(id);
            }
        }
    }

    /// Addresses: a leaf-pushed multibit trie, one byte per level.
    fn addresses(&mut self) {
        for (field, unknown_slot, pick) in [
            (
                ADDR_SRC,
                IX::MIRROR_IX_SRC_UNKNOWN.0 as usize,
                (|r: &Rule| r.source) as fn(&Rule) -> Option<IpNet>,
            ),
            (
                ADDR_DST,
                IX::MIRROR_IX_DST_UNKNOWN.0 as usize,
                |r: &Rule| r.destination,
            ),
        ] {
            let unconstrained = self.base(|r| pick(r).is_some());
            self.index[unknown_slot] = self.classes.id(&unconstrained);
            let mut by_prefix: HashMap<IpNet, Vec<usize>> = HashMap::new();
            for (i, (r, _)) in self.rules.iter().enumerate() {
                if let Some(net) = pick(r) {
                    by_prefix.entry(net.trunc()).or_default().push(i);
                }
            }
            // The class of prefix q: the unconstrained rules and those whose
            // prefix contains q.
            let mut memo: HashMap<(Vec<u8>, u8), u32> = HashMap::new();
            let mut class_of = |q: &Prefix| -> u32 {
                if let Some(&c) = memo.get(&(q.bytes.clone(), q.len)) {
                    return c;
                }
                let mut b = unconstrained.clone();
                for len in 0..=q.len {
                    for &i in by_prefix.get(&q.truncated(len).net()).into_iter().flatten() {
                        set(&mut b, i);
                    }
                }
                let c = self.classes.id(&b);
                memo.insert((q.bytes.clone(), q.len), c);
                c
            };
            for v6 in [false, true] {
                let prefixes: Vec<Prefix> = by_prefix
                    .keys()
                    .filter(|n| n.addr().is_ipv6() == v6 && n.prefix_len() > 0)
                    .map(Prefix::of)
                    .collect();
                let root = usize::from(field) * 2 + usize::from(v6);
                let zero = Prefix::zero(v6);
                build_node(&mut self.nodes, root, 0, &prefixes, &zero, &mut class_of);
            }
        }
    }

    /// Rule words: what each rule does once it is its session's first match; the rule-word count, the constant verdict, and the roots again, where the kernel reads the first level.
    fn rule_words(&mut self) {
        let rw = IX::MIRROR_IX_RULES.0 as usize;
        for (i, (r, session)) in self.rules.iter().enumerate() {
            let next = self.rules[i..]
                .iter()
                .position(|(_, s)| s != session)
                .map_or(self.rules.len(), |k| i + k);
            let mut w = next as u32 | (u32::from(*session) << RW::MIRROR_RW_SESSION_SHIFT.0);
            if r.action == Action::Accept {
                w |= RW::MIRROR_RW_ACCEPT.0;
            }
            self.index[rw + i] = w;
        }
        self.index[IX::MIRROR_IX_WORDS.0 as usize] = self.rules.len().div_ceil(64) as u32;
        self.index[IX::MIRROR_IX_CONSTANT.0 as usize] = constant_verdict(self.rules);
        // The roots again, where the kernel reads the first level.
        let roots = IX::MIRROR_IX_ROOTS.0 as usize;
        for (i, node) in self.nodes.iter().take(4).enumerate() {
            self.index[roots + i * 256..roots + (i + 1) * 256].copy_from_slice(node);
        }
    }
}

/// A prefix as bytes and a length, for the address trie.
#[derive(Debug, Clone)]
struct Prefix {
    bytes: Vec<u8>,
    len: u8,
    v6: bool,
}

impl Prefix {
    fn of(net: &IpNet) -> Prefix {
        let (bytes, v6) = match net.trunc() {
            IpNet::V4(n) => (n.network().octets().to_vec(), false),
            IpNet::V6(n) => (n.network().octets().to_vec(), true),
        };
        Prefix {
            bytes,
            len: net.prefix_len(),
            v6,
        }
    }

    fn zero(v6: bool) -> Prefix {
        Prefix {
            bytes: vec![0; if v6 { 16 } else { 4 }],
            len: 0,
            v6,
        }
    }

    fn net(&self) -> IpNet {
        let addr: IpAddr = if self.v6 {
            let b: [u8; 16] = self.bytes.clone().try_into().expect("16 bytes");
            b.into()
        } else {
            let b: [u8; 4] = self.bytes.clone().try_into().expect("4 bytes");
            b.into()
        };
        IpNet::new(addr, self.len).expect("a valid length").trunc()
    }

    /// The first `len` bits of this prefix.
    fn truncated(&self, len: u8) -> Prefix {
        Prefix::of(&IpNet::new(self.net().addr(), len).expect("a shorter length"))
    }
}

/// Fills trie node `idx` at `depth` (address bytes already consumed).
/// `inside`: the rule prefixes longer than `depth` bytes under the node's
/// path; `inherited`: the longest rule prefix containing the whole path.
/// Each of the 256 entries is a leaf (the class of the longest rule prefix
/// containing its range) unless a longer prefix lies inside it: then a child.
fn build_node(
    nodes: &mut Vec<[u32; 256]>,
    idx: usize,
    depth: usize,
    inside: &[Prefix],
    inherited: &Prefix,
    class_of: &mut dyn FnMut(&Prefix) -> u32,
) {
    let end = (depth + 1) * 8;
    // Longest rule prefix ending at this level covering each byte value, and
    // the longer prefixes under each byte value.
    let mut best: Vec<Option<&Prefix>> = vec![None; 256];
    let mut deeper: Vec<Vec<Prefix>> = vec![Vec::new(); 256];
    let mut ending: Vec<&Prefix> = Vec::new();
    for p in inside {
        if usize::from(p.len) <= end {
            ending.push(p);
        } else {
            deeper[usize::from(p.bytes[depth])].push(p.clone());
        }
    }
    ending.sort_by_key(|p| p.len);
    for p in ending {
        let span = 1usize << (end - usize::from(p.len));
        let lo = usize::from(p.bytes[depth]) & !(span - 1);
        for b in best.iter_mut().skip(lo).take(span) {
            *b = Some(p);
        }
    }
    for (byte, under) in deeper.iter().enumerate() {
        let here = best[byte].unwrap_or(inherited);
        nodes[idx][byte] = if under.is_empty() {
            ADDR_LEAF | class_of(here)
        } else {
            let child = nodes.len();
            nodes.push([0; 256]);
            let here = here.clone();
            build_node(nodes, child, depth + 1, under, &here, class_of);
            child as u32
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PortRange;
    use crate::filter::classify::{filter_decision, parse_frame};

    fn rule(number: u16, action: Action) -> Rule {
        Rule::any(number, action, Direction::Ingress)
    }

    fn view(src: &str, dst: &str, proto: u8, ports: Option<(u16, u16)>) -> FrameView {
        let (s, d): (IpAddr, IpAddr) = (src.parse().expect("ip"), dst.parse().expect("ip"));
        FrameView {
            vlan: None,
            ipv4: Some(s.is_ipv4()),
            addrs: Some((s, d)),
            proto: Some(proto),
            ports,
        }
    }

    fn reference(filters: &[&Filter], f: &FrameView) -> Option<usize> {
        filters
            .iter()
            .position(|fl| filter_decision(fl, Direction::Ingress, f) == Some(Action::Accept))
    }

    /// Each family's address trie holds only that family's prefixes (and
    /// no /0, which its root's class already covers): a set with both has
    /// the nodes of each alone, the four roots counted once.
    #[test]
    fn each_familys_trie_holds_only_its_own_prefixes() {
        // Each rule a source CIDR, or a destination one after "to ".
        let with = |nets: &[&str]| {
            let rules = nets
                .iter()
                .enumerate()
                .map(|(i, net)| {
                    let mut r = rule(i as u16 + 1, Action::Accept);
                    match net.strip_prefix("to ") {
                        Some(d) => r.destination = Some(d.parse().expect("cidr")),
                        None => r.source = Some(net.parse().expect("cidr")),
                    }
                    r
                })
                .collect();
            let f = Filter {
                name: "f".into(),
                rules,
            };
            RuleSet::build(&[&f], Direction::Ingress)
                .expect("builds")
                .addr_nodes
                .len()
        };
        let v4 = ["10.0.0.0/8", "10.1.0.0/16", "0.0.0.0/0", "to 10.1.2.0/24"];
        let v6 = ["2001:db8::/32", "fd00::/8", "::/0", "to 2001:db8::/32"];
        let both: Vec<&str> = v4.iter().chain(&v6).copied().collect();
        assert_eq!(with(&both), with(&v4) + with(&v6) - 4);
        // A /0 alone adds no node; a prefix takes one node per byte below
        // its root's, in its own family's trie only (the 256-way trie).
        assert_eq!(with(&["0.0.0.0/0", "::/0"]), 4);
        assert_eq!(with(&["2001:db8::/32"]), 4 + 3);
        assert_eq!(with(&["10.1.2.0/24"]), 4 + 2);
        // An IPv6 prefix's first bytes are no IPv4 prefix: 2001:db8::/32
        // is not 32.1.13.184/32, fd00::/8 is not 253.0.0.0/8.
        let mut a = rule(1, Action::Accept);
        a.source = Some("2001:db8::/32".parse().expect("cidr"));
        let mut b = rule(2, Action::Accept);
        b.source = Some("fd00::/8".parse().expect("cidr"));
        let f = Filter {
            name: "f".into(),
            rules: vec![a, b],
        };
        let set = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        for src in ["32.1.13.184", "253.1.2.3"] {
            assert_eq!(
                set.classify(&view(src, "10.0.0.1", 17, None)),
                None,
                "{src}"
            );
        }
        assert_eq!(set.classify(&view("fd00::1", "::1", 17, None)), Some(0));
        // Nor the other way: 10.1.0.0/16 is not a01::/16.
        let mut c = rule(1, Action::Accept);
        c.source = Some("10.1.0.0/16".parse().expect("cidr"));
        let f = Filter {
            name: "f".into(),
            rules: vec![c],
        };
        let set = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        assert_eq!(set.classify(&view("a01::1", "::1", 17, None)), None);
        assert_eq!(
            set.classify(&view("10.1.2.3", "10.0.0.1", 17, None)),
            Some(0)
        );
    }

    #[test]
    fn aws_example_in_tables_matches_the_reference() {
        let mut reject = rule(100, Action::Reject);
        reject.protocol = Some(6);
        reject.destination_port = Some(PortRange { lo: 443, hi: 443 });
        let f = Filter {
            name: "f".into(),
            rules: vec![reject, rule(200, Action::Accept)],
        };
        let set = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        let https = view("10.0.0.1", "10.0.0.2", 6, Some((40000, 443)));
        let ssh = view("10.0.0.1", "10.0.0.2", 6, Some((40000, 22)));
        assert_eq!(set.classify(&https), None);
        assert_eq!(set.classify(&ssh), Some(0));
        assert_eq!(set.classify(&parse_frame(&[0u8; 20])), Some(0));
    }

    #[test]
    fn a_verdict_no_field_can_change_is_constant() {
        let mut tcp = rule(10, Action::Accept);
        tcp.protocol = Some(6);
        let accept_all = rule(10, Action::Accept);
        let reject_all = rule(10, Action::Reject);
        let session = |s: u32| CONST::MIRROR_CONST_SESSION.0 + s;
        let (none, nothing) = (CONST::MIRROR_CONST_NONE.0, CONST::MIRROR_CONST_NOTHING.0);
        // (what, rules in evaluation order with their session, constant,
        // verdict for an SSH frame)
        for (what, rules, want, ssh_verdict) in [
            ("no rules", vec![], nothing, None),
            ("accept all", vec![(&accept_all, 0)], session(0), Some(0)),
            (
                "accept all after a filtering rule",
                vec![(&tcp, 0), (&accept_all, 0)],
                none,
                Some(0),
            ),
            (
                "session 0 rejects all, session 1 accepts all",
                vec![(&reject_all, 0), (&tcp, 0), (&accept_all, 1)],
                session(1),
                Some(1),
            ),
            (
                "session 0 rejects all, session 1 filters",
                vec![(&reject_all, 0), (&tcp, 1)],
                none,
                Some(1),
            ),
            ("reject all", vec![(&reject_all, 0)], nothing, None),
            ("filters", vec![(&tcp, 0)], none, Some(0)),
        ] {
            let set = RuleSet::from_ordered(&rules).expect("builds");
            assert_eq!(set.index[IX::MIRROR_IX_CONSTANT.0 as usize], want, "{what}");
            let ssh = view("10.0.0.1", "10.0.0.2", 6, Some((40000, 22)));
            assert_eq!(set.classify(&ssh), ssh_verdict, "{what}: ssh");
        }
    }

    #[test]
    fn nested_prefixes_pick_every_containing_rule() {
        let mut wide = rule(10, Action::Reject);
        wide.source = Some("10.0.0.0/8".parse().expect("cidr"));
        wide.protocol = Some(17);
        let mut narrow = rule(20, Action::Accept);
        narrow.source = Some("10.1.0.0/16".parse().expect("cidr"));
        let mut v6 = rule(30, Action::Accept);
        v6.source = Some("2001:db8::/32".parse().expect("cidr"));
        let f = Filter {
            name: "f".into(),
            rules: vec![wide, narrow, v6],
        };
        let set = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        for (src, proto) in [
            ("10.1.2.3", 17),
            ("10.1.2.3", 6),
            ("10.2.2.3", 6),
            ("11.0.0.1", 6),
            ("2001:db8::1", 6),
            ("2001:db9::1", 6),
        ] {
            let dst = if src.contains(':') { "::1" } else { "1.1.1.1" };
            let v = view(src, dst, proto, None);
            assert_eq!(
                set.classify(&v),
                reference(&[&f], &v),
                "{src} proto {proto}"
            );
        }
    }

    #[test]
    fn reject_moves_on_to_the_next_session_across_words() {
        // Session 0: 100 non-matching rules, then a reject of everything;
        // session 1: an accept. Session 0's reject sits in word 1.
        let mut a: Vec<Rule> = (1..=100)
            .map(|i| {
                let mut r = rule(i, Action::Accept);
                r.vlan = Some(i);
                r
            })
            .collect();
        a.push(rule(200, Action::Reject));
        let fa = Filter {
            name: "a".into(),
            rules: a,
        };
        let fb = Filter {
            name: "b".into(),
            rules: vec![rule(1, Action::Accept)],
        };
        let set = RuleSet::build(&[&fa, &fb], Direction::Ingress).expect("builds");
        let mut v = view("1.1.1.1", "2.2.2.2", 6, Some((1, 2)));
        assert_eq!(set.classify(&v), Some(1));
        v.vlan = Some(50);
        assert_eq!(set.classify(&v), Some(0));
    }

    #[test]
    fn too_many_rules_is_refused() {
        let rules: Vec<Rule> = (0..=MAX_RULES)
            .map(|i| rule(i as u16, Action::Accept))
            .collect();
        let refs: Vec<(&Rule, u8)> = rules.iter().map(|r| (r, 0)).collect();
        assert_eq!(
            RuleSet::from_ordered(&refs).map(|_| ()),
            Err(RuleSetError::TooManyRules {
                count: MAX_RULES + 1
            })
        );
    }

    #[test]
    fn the_most_rules_and_sessions_build_and_one_more_does_not() {
        let rules: Vec<Rule> = (0..MAX_RULES)
            .map(|i| {
                let mut r = rule(i as u16, Action::Reject);
                r.protocol = Some(6);
                r
            })
            .collect();
        let refs: Vec<(&Rule, u8)> = rules.iter().map(|r| (r, 0)).collect();
        let rs = RuleSet::from_ordered(&refs).expect("MAX_RULES rules build");
        // Every word is scanned for a UDP frame no rule takes.
        let udp = view("10.0.0.1", "10.0.0.2", 17, Some((1, 2)));
        assert_eq!(rs.classify(&udp), None);
        let sessions = mirror_ebpf::limits::MAX_SESSIONS as usize;
        let filters: Vec<Filter> = (0..=sessions)
            .map(|i| Filter {
                name: format!("f{i}"),
                rules: vec![rule(1, Action::Accept)],
            })
            .collect();
        let refs: Vec<&Filter> = filters.iter().collect();
        assert!(RuleSet::build(&refs[..sessions], Direction::Ingress).is_ok());
        assert_eq!(
            RuleSet::build(&refs, Direction::Ingress).map(|_| ()),
            Err(RuleSetError::TooManySessions {
                count: sessions + 1
            })
        );
    }

    #[test]
    fn a_port_range_ends_where_it_says() {
        let mut r1 = rule(1, Action::Accept);
        r1.protocol = Some(17);
        r1.destination_port = Some(PortRange { lo: 53, hi: 80 });
        let mut r2 = rule(2, Action::Accept);
        r2.protocol = Some(17);
        r2.destination_port = Some(PortRange { lo: 443, hi: 443 });
        let f = Filter {
            name: "f".into(),
            rules: vec![r1, r2],
        };
        let rs = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        for (port, want) in [
            (52, None),
            (53, Some(0)),
            (80, Some(0)),
            (81, None),
            (442, None),
            (443, Some(0)),
            (444, None),
        ] {
            let v = view("10.0.0.1", "10.0.0.2", 17, Some((1000, port)));
            assert_eq!(rs.classify(&v), want, "port {port}");
            assert_eq!(rs.classify(&v), reference(&[&f], &v), "port {port}");
        }
    }

    #[test]
    fn each_class_summary_bit_says_whether_its_word_has_a_rule() {
        let mut r = Rng(7);
        let filters: Vec<Filter> = (0..2)
            .map(|i| Filter {
                name: format!("f{i}"),
                rules: (0..300).map(|n| random_rule(&mut r, n + 1)).collect(),
            })
            .collect();
        let refs: Vec<&Filter> = filters.iter().collect();
        let rs = RuleSet::build(&refs, Direction::Ingress).expect("builds");
        for (c, b) in rs.bitmaps.iter().enumerate() {
            for w in 0..BITMAP_WORDS {
                let summary = b[w / 64] >> (w % 64) & 1 == 1;
                assert_eq!(summary, b[SUMMARY_WORDS + w] != 0, "class {c}, word {w}");
            }
        }
    }

    /// xorshift64: a fixed, dependency-free stream of test values.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }

        fn pick<T: Copy>(&mut self, from: &[T]) -> T {
            from[(self.next() % from.len() as u64) as usize]
        }

        fn maybe<T: Copy>(&mut self, from: &[T]) -> Option<T> {
            (self.next() % 3 != 0).then(|| self.pick(from))
        }
    }

    const V4: [&str; 6] = [
        "10.0.0.1",
        "10.0.1.7",
        "10.9.0.1",
        "192.168.1.1",
        "192.168.1.200",
        "8.8.8.8",
    ];
    const V6: [&str; 4] = ["2001:db8::1", "2001:db8:1::7", "fd00::1", "fe80::9"];
    const NETS: [&str; 10] = [
        "10.0.0.0/8",
        "10.0.0.0/24",
        "10.0.1.7/32",
        "192.168.1.0/25",
        "0.0.0.0/0",
        "2001:db8::/32",
        "2001:db8:1::/48",
        "::/0",
        "fd00::1/128",
        "192.168.0.0/16",
    ];
    const PORTS: [u16; 6] = [22, 53, 80, 443, 1024, 65535];

    fn random_rule(r: &mut Rng, number: u16) -> Rule {
        let mut rule = Rule::any(
            number,
            if r.next() % 3 == 0 {
                Action::Reject
            } else {
                Action::Accept
            },
            Direction::Ingress,
        );
        rule.vlan = if r.next() % 5 == 0 {
            Some(r.pick(&[1u16, 7, 100]))
        } else {
            None
        };
        rule.protocol = r.maybe(&[6u8, 17, 1]).filter(|_| r.next() % 2 == 0);
        let net =
            |r: &mut Rng| -> Option<IpNet> { r.maybe(&NETS).map(|n| n.parse().expect("cidr")) };
        rule.source = net(r).filter(|_| r.next() % 2 == 0);
        rule.destination = net(r).filter(|_| r.next() % 2 == 0);
        // Two CIDRs of different families never match anything: keep one family.
        if let (Some(a), Some(b)) = (&rule.source, &rule.destination) {
            if matches!(a, IpNet::V4(_)) != matches!(b, IpNet::V4(_)) {
                rule.destination = None;
            }
        }
        if matches!(rule.protocol, Some(6 | 17)) {
            let range = |r: &mut Rng| {
                let (a, b) = (r.pick(&PORTS), r.pick(&PORTS));
                PortRange {
                    lo: a.min(b),
                    hi: a.max(b),
                }
            };
            rule.source_port = (r.next() % 3 == 0).then(|| range(r));
            rule.destination_port = (r.next() % 2 == 0).then(|| range(r));
        }
        rule
    }

    fn random_view(r: &mut Rng) -> FrameView {
        let vlan = if r.next() % 4 == 0 {
            Some(r.pick(&[1u16, 7, 100, 4095]))
        } else {
            None
        };
        match r.next() % 5 {
            0 => FrameView {
                vlan,
                ..Default::default()
            },
            n => {
                let v4 = n <= 2;
                let addr = |r: &mut Rng| -> IpAddr {
                    if v4 { r.pick(&V4) } else { r.pick(&V6) }
                        .parse()
                        .expect("ip")
                };
                let proto = r.maybe(&[6u8, 17, 1, 132]);
                // The rules' port bounds and their neighbours.
                let near = |r: &mut Rng| {
                    let p = r.pick(&PORTS);
                    match r.next() % 3 {
                        0 => p.saturating_sub(1),
                        1 => p,
                        _ => p.saturating_add(1),
                    }
                };
                let ports = match proto {
                    Some(6 | 17 | 132) if r.next() % 4 != 0 => Some((near(r), near(r))),
                    _ => None,
                };
                let addrs = (r.next() % 8 != 0).then(|| (addr(r), addr(r)));
                FrameView {
                    vlan,
                    ipv4: Some(v4),
                    addrs,
                    proto: if addrs.is_some() { proto } else { None },
                    ports: if addrs.is_some() { ports } else { None },
                }
            }
        }
    }

    #[test]
    fn random_filters_in_tables_agree_with_the_reference_on_random_frames() {
        let mut r = Rng(0x6d69_7272_6f72_2121);
        for round in 0..12 {
            // Up to 3 sessions, 1..150 rules: across bitmap words.
            let filters: Vec<Filter> = (0..1 + r.next() % 3)
                .map(|i| Filter {
                    name: format!("f{i}"),
                    rules: (0..1 + r.next() % 150)
                        .map(|n| random_rule(&mut r, n as u16 + 1))
                        .collect(),
                })
                .collect();
            let refs: Vec<&Filter> = filters.iter().collect();
            let rs = RuleSet::build(&refs, Direction::Ingress).expect("builds");
            for _ in 0..400 {
                let f = random_view(&mut r);
                assert_eq!(
                    rs.classify(&f),
                    reference(&refs, &f),
                    "round {round}: {f:?}"
                );
            }
        }
    }

    #[test]
    fn memory_is_the_index_the_trie_nodes_and_the_classes() {
        let mut r1 = rule(1, Action::Accept);
        r1.source = Some("10.1.2.0/24".parse().expect("cidr"));
        let f = Filter {
            name: "f".into(),
            rules: vec![r1],
        };
        let rs = RuleSet::build(&[&f], Direction::Ingress).expect("builds");
        // u32 index slots, 256-entry u32 trie nodes, 4 + 256 u64 per class.
        assert_eq!(
            rs.memory_bytes(),
            153_354 * 4 + rs.addr_nodes.len() * 256 * 4 + rs.bitmaps.len() * 260 * 8
        );
        assert!(rs.addr_nodes.len() > 4, "a /24 needs nodes below the roots");
        assert!(rs.bitmaps.len() >= 2, "rule 1 and nothing");
    }

    #[test]
    fn a_sources_filters_come_in_session_priority_order() {
        let text = r#"
[[source]]
name = "a"
interface = "x"
[[source]]
name = "b"
interface = "y"
[[filter]]
name = "f1"
[[filter]]
name = "f2"
[[filter]]
name = "f3"
[[target]]
name = "t"
kind = "interface"
interface = "z"
[[session]]
name = "late"
source = "a"
filter = "f1"
targets = ["t"]
priority = 20
[[session]]
name = "early"
source = "a"
filter = "f2"
targets = ["t"]
priority = 10
[[session]]
name = "other"
source = "b"
filter = "f3"
targets = ["t"]
"#;
        let c = crate::config::parse(text, "t.toml").expect("valid");
        let names = |s| {
            source_filters(&c, s)
                .iter()
                .map(|f| f.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(0), ["f2", "f1"]);
        assert_eq!(names(1), ["f3"]);
    }
}
