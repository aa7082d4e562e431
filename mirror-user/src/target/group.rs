//! `[[target_group]]`: flow-symmetric load balancing over member targets.
//!
//! The kernel's flow hash is symmetric (both directions of a 5-tuple, VLAN
//! included, or of a MAC pair, hash alike), so picking a member from the hash
//! alone keeps a connection's two halves on one member, as Suricata's
//! `cluster_flow` or a collector load balancer expect. Members are chosen by
//! rendezvous (highest-random-weight) hashing: each member scores the flow and
//! the highest-scoring member that is up wins. When a member goes down only
//! its own flows move (to their second choice), counted `rehashed`; the other
//! members keep theirs, and get the moved flows back when it returns.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::TargetQueue;

pub struct TargetGroup {
    pub name: String,
    pub members: Vec<Arc<TargetQueue>>,
    /// Copies sent to another member because their first choice was down.
    rehashed: AtomicU64,
    /// Copies offered while every member was down (counted `down` by the first choice).
    all_down: AtomicU64,
}

impl TargetGroup {
    pub fn new(name: &str, members: Vec<Arc<TargetQueue>>) -> TargetGroup {
        TargetGroup {
            name: name.to_string(),
            members,
            rehashed: AtomicU64::new(0),
            all_down: AtomicU64::new(0),
        }
    }

    /// The member a flow with symmetric hash `hash` goes to.
    pub fn pick(&self, hash: u32) -> &Arc<TargetQueue> {
        let first = rank(hash, self.members.len(), |_| true);
        if self.members[first].is_up() {
            return &self.members[first];
        }
        if !self.members.iter().any(|m| m.is_up()) {
            self.all_down.fetch_add(1, Ordering::Relaxed);
            return &self.members[first];
        }
        self.rehashed.fetch_add(1, Ordering::Relaxed);
        let up = rank(hash, self.members.len(), |i| self.members[i].is_up());
        &self.members[up]
    }

    pub fn snapshot(&self) -> GroupStats {
        GroupStats {
            members: self.members.iter().map(|m| m.name.clone()).collect(),
            members_up: self.members.iter().filter(|m| m.is_up()).count() as u32,
            rehashed: self.rehashed.load(Ordering::Relaxed),
            all_down: self.all_down.load(Ordering::Relaxed),
        }
    }
}

/// The highest-scoring member among those `eligible` says yes to.
/// `n` is at least 1 and some member is eligible.
pub fn rank(hash: u32, n: usize, eligible: impl Fn(usize) -> bool) -> usize {
    (0..n)
        .filter(|&i| eligible(i))
        .max_by_key(|&i| score(hash, i as u32))
        .unwrap_or(0)
}

/// A member's weight for a flow: a 64-bit mix of both (splitmix64's finaliser).
fn score(hash: u32, member: u32) -> u64 {
    let mut z = (u64::from(hash) << 32 | u64::from(member)).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// `mirror stats` view of a group.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupStats {
    pub members: Vec<String>,
    pub members_up: u32,
    pub rehashed: u64,
    pub all_down: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flows_spread_over_members_and_only_a_down_members_flows_move() {
        let n = 4;
        let mut count = [0u32; 4];
        let mut moved = 0;
        for h in 0..20_000u32 {
            let hash = h.wrapping_mul(0x9e37_79b9);
            let all = rank(hash, n, |_| true);
            count[all] += 1;
            let without_2 = rank(hash, n, |i| i != 2);
            if all == 2 {
                assert_ne!(without_2, 2);
                moved += 1;
            } else {
                assert_eq!(without_2, all, "a flow of a live member moved");
            }
        }
        for c in count {
            assert!((4000..6000).contains(&c), "uneven spread: {count:?}");
        }
        assert_eq!(moved, count[2]);
    }

    #[test]
    fn a_members_score_is_splitmix64_of_hash_and_member() {
        // The values the kernel's member_score (mirror.bpf.c) must give too.
        assert_eq!(score(0, 0), 0xe220_a839_7b1d_cdaf);
        assert_eq!(score(1, 2), 0xb370_3ad8_9450_7022);
        assert_eq!(score(0xdead_beef, 7), 0x51b6_15e6_5e65_0fe3);
        assert_eq!(score(0xffff_ffff, 3), 0x8b8d_73f5_e526_b997);
    }

    #[test]
    fn a_down_first_choice_is_rehashed_and_all_down_is_counted_at_the_first() {
        use crate::target::Oversize;
        let members: Vec<Arc<TargetQueue>> = ["a", "b", "c"]
            .iter()
            .map(|n| {
                Arc::new(TargetQueue::new(n, "interface", 8, 1518, Oversize::Drop).expect("memory"))
            })
            .collect();
        let g = TargetGroup::new("g", members.clone());
        let hash = 0x1234_5678;
        let first = rank(hash, 3, |_| true);
        assert_eq!(g.pick(hash).name, members[first].name);
        members[first].set_up(false);
        let second = g.pick(hash);
        assert_ne!(second.name, members[first].name);
        assert_eq!(second.name, members[rank(hash, 3, |i| i != first)].name);
        for m in &members {
            m.set_up(false);
        }
        assert_eq!(
            g.pick(hash).name,
            members[first].name,
            "all down: the first choice"
        );
        let s = g.snapshot();
        assert_eq!((s.rehashed, s.all_down, s.members_up), (1, 1, 0));
    }
}
