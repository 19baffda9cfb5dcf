//! Placement of ozones on cluster members by rendezvous (highest random weight) hashing: every
//! member scores `blake3(address ‖ member)`, the R highest scores own the ozone. Adding or
//! removing a member moves only the ozones it gains or loses (about 1/N of them), and every
//! node computes the same owners from the same member list, with no coordination.

use super::OzoneAddr;
use crate::identity::NodeId;

fn score(addr: &OzoneAddr, member: &NodeId) -> [u8; 32] {
    let mut h = blake3::Hasher::new_derive_key("echomesh ozone placement v1");
    h.update(&addr.0);
    h.update(&member.0);
    *h.finalize().as_bytes()
}

/// All `members` in preference order for `addr` (highest score first). The first R are the
/// owners; the next ones take over, in order, when an owner is gone.
pub fn ranked(addr: &OzoneAddr, members: &[NodeId]) -> Vec<NodeId> {
    let mut scored: Vec<([u8; 32], NodeId)> =
        members.iter().map(|m| (score(addr, m), *m)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().map(|(_, m)| m).collect()
}

/// The `r` owners of `addr` among `members` (all of them when fewer).
pub fn owners(addr: &OzoneAddr, members: &[NodeId], r: usize) -> Vec<NodeId> {
    let mut v = ranked(addr, members);
    v.truncate(r);
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn node(i: u8) -> NodeId {
        NodeId(*blake3::hash(&[i]).as_bytes())
    }

    fn addr(i: u32) -> OzoneAddr {
        OzoneAddr(*blake3::hash(&i.to_be_bytes()).as_bytes())
    }

    #[test]
    fn owners_are_deterministic_order_independent_and_capped() {
        let members: Vec<NodeId> = (0..5).map(node).collect();
        let mut shuffled = members.clone();
        shuffled.reverse();
        for i in 0..100 {
            let a = addr(i);
            assert_eq!(owners(&a, &members, 2), owners(&a, &shuffled, 2));
            assert_eq!(owners(&a, &members, 2).len(), 2);
        }
        assert_eq!(owners(&addr(1), &members[..1], 2), vec![members[0]]);
        assert!(owners(&addr(1), &[], 2).is_empty());
    }

    #[test]
    fn load_is_spread_and_removing_a_member_moves_only_its_ozones() {
        let members: Vec<NodeId> = (0..4).map(node).collect();
        let mut load: HashMap<NodeId, usize> = HashMap::new();
        let n = 4000;
        let mut moved = 0;
        for i in 0..n {
            let a = addr(i);
            let before = owners(&a, &members, 2);
            for m in &before {
                *load.entry(*m).or_default() += 1;
            }
            // Member 3 leaves: ozones it did not own keep both owners.
            let after = owners(&a, &members[..3], 2);
            if !before.contains(&members[3]) {
                assert_eq!(before, after);
            } else {
                moved += 1;
                // The surviving owner stays an owner: no ozone loses both copies at once.
                let survivor = before.iter().find(|m| **m != members[3]).unwrap();
                assert!(after.contains(survivor));
            }
        }
        // Each of 4 members owns about half of the ozones with R = 2.
        for (_, l) in load {
            assert!((l as f64 - n as f64 / 2.0).abs() < n as f64 * 0.05, "{l}");
        }
        assert!(
            (moved as f64 - n as f64 / 2.0).abs() < n as f64 * 0.05,
            "{moved}"
        );
    }

    proptest::proptest! {
        /// For any members (1–12), R (1–5) and address: owners are distinct members, as many
        /// as min(R, N), the same whatever order the members are listed in; removing a
        /// non-owner changes nothing, removing an owner keeps the other owners and promotes
        /// the next-ranked member; adding a member changes at most one owner.
        #[test]
        fn placement_properties(
            ids in proptest::collection::hash_set(proptest::prelude::any::<u8>(), 1..12),
            r in 1usize..5,
            a in proptest::prelude::any::<u32>(),
            rotate in 0usize..12,
            drop_pick in 0usize..12,
            newcomer in proptest::prelude::any::<u8>(),
        ) {
            let members: Vec<NodeId> = ids.iter().map(|i| node(*i)).collect();
            let a = addr(a);
            let own = owners(&a, &members, r);
            proptest::prop_assert_eq!(own.len(), r.min(members.len()));
            let distinct: std::collections::HashSet<_> = own.iter().collect();
            proptest::prop_assert_eq!(distinct.len(), own.len());
            proptest::prop_assert!(own.iter().all(|m| members.contains(m)));

            let mut rotated = members.clone();
            rotated.rotate_left(rotate % members.len());
            proptest::prop_assert_eq!(&owners(&a, &rotated, r), &own);

            let gone = members[drop_pick % members.len()];
            let rest: Vec<NodeId> = members.iter().copied().filter(|m| *m != gone).collect();
            let after = owners(&a, &rest, r);
            if own.contains(&gone) {
                for m in own.iter().filter(|m| **m != gone) {
                    proptest::prop_assert!(after.contains(m));
                }
                let next = ranked(&a, &members).get(r).copied();
                if let Some(next) = next {
                    proptest::prop_assert!(after.contains(&next));
                }
            } else {
                proptest::prop_assert_eq!(&after, &own);
            }

            if !ids.contains(&newcomer) {
                let mut more = members.clone();
                more.push(node(newcomer));
                let grown = owners(&a, &more, r);
                let kept = grown.iter().filter(|m| own.contains(m)).count();
                proptest::prop_assert!(kept + 1 >= own.len().min(grown.len()));
            }
        }
    }
}
