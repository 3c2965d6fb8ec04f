//! The shard decision, pure: from one listing of the shard set's Leases, this replica's
//! name and the time, what to write this tick. The Kubernetes side (`super::lease`) only
//! carries the steps out, each as a conditional write on the Lease's resourceVersion, so
//! two replicas that decide on the same Lease at once cannot both win: the loser gets a 409
//! and decides again on the next tick's listing.

use jiff::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One Lease as listed: who holds it, when it was renewed, for how long.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseView {
    /// Holder identity (None or empty: free).
    pub holder: Option<String>,
    /// Last renewal.
    pub renewed: Option<Timestamp>,
    /// Lease duration.
    pub duration: Duration,
    /// resourceVersion, the precondition of any write.
    pub version: String,
}

impl LeaseView {
    /// The holder, while the lease has not run out at `now`.
    pub fn live_holder(&self, now: Timestamp) -> Option<&str> {
        let holder = self.holder.as_deref().filter(|h| !h.is_empty())?;
        let renewed = self.renewed?;
        let until = renewed.checked_add(self.duration).ok()?;
        (until > now).then_some(holder)
    }

    /// How long ago the lease ran out (None while live; free leases count from renewal).
    fn expired_for(&self, now: Timestamp) -> Option<Duration> {
        if self.live_holder(now).is_some() {
            return None;
        }
        let until = self
            .renewed
            .and_then(|r| r.checked_add(self.duration).ok())
            .unwrap_or(Timestamp::UNIX_EPOCH);
        Some(Duration::try_from(now.duration_since(until)).unwrap_or(Duration::ZERO))
    }
}

/// The listing of one shard set: shard Leases by index, membership Leases by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// `exact-operator-shard-<i>`.
    pub shards: BTreeMap<u32, LeaseView>,
    /// `exact-operator-member-<replica>`, by Lease name.
    pub members: BTreeMap<String, LeaseView>,
}

/// One write to make.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Take a shard: create its Lease (`version` None) or take over a free or expired one.
    Acquire { shard: u32, version: Option<String> },
    /// Renew a shard this replica holds.
    Renew { shard: u32, version: String },
    /// Give a shard up (holder cleared): this replica holds more than its share.
    Release { shard: u32, version: String },
    /// Delete the membership Lease of a replica gone for long (pod names change with every
    /// rollout, so they would pile up).
    ForgetMember { name: String, version: String },
}

/// The decision of one tick.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Live members, this replica included.
    pub members: usize,
    /// Shards this replica wants: ceil(shards / members).
    pub share: u32,
    /// The writes, in order.
    pub steps: Vec<Step>,
}

/// Fixed inputs of the decision.
#[derive(Clone, Debug)]
pub struct Rules {
    /// Number of shards.
    pub shards: u32,
    /// Membership Leases expired this long are deleted.
    pub forget_members_after: Duration,
}

/// Decides one tick for replica `me` (whose own membership Lease is `my_member`).
///
/// - members: the live membership Leases plus this replica (it counts itself even before its
///   own membership Lease shows in a listing);
/// - share: ceil(shards / members), so the shares always cover every shard;
/// - shards held by `me` are renewed, except the ones above the share, released highest
///   index first;
/// - below the share, free or expired shards are taken (free first), starting at an offset
///   derived from `me` so replicas starting together do not all race for shard 0.
///
/// Balanced holdings (nobody above the share, nothing free) give renewals only: no flapping.
pub fn plan(snapshot: &Snapshot, me: &str, my_member: &str, now: Timestamp, rules: &Rules) -> Plan {
    let mut live: BTreeSet<&str> = snapshot
        .members
        .values()
        .filter_map(|m| m.live_holder(now))
        .collect();
    live.insert(me);
    let members = live.len();
    let share = rules
        .shards
        .div_ceil(u32::try_from(members).unwrap_or(u32::MAX).max(1));
    let mut steps = Vec::new();
    let mine: Vec<(u32, &LeaseView)> = snapshot
        .shards
        .iter()
        .filter(|(i, l)| **i < rules.shards && l.holder.as_deref() == Some(me))
        .map(|(i, l)| (*i, l))
        .collect();
    let keep = mine.len().min(share as usize);
    for (n, (shard, lease)) in mine.iter().enumerate() {
        let version = lease.version.clone();
        steps.push(if n < keep {
            Step::Renew {
                shard: *shard,
                version,
            }
        } else {
            Step::Release {
                shard: *shard,
                version,
            }
        });
    }
    let wanted = (share as usize).saturating_sub(mine.len());
    if wanted > 0 {
        let offset = (super::stable_hash(me.as_bytes()) % u64::from(rules.shards.max(1))) as u32;
        let rotated = (0..rules.shards).map(|k| (k + offset) % rules.shards);
        let mut free = Vec::new();
        let mut expired = Vec::new();
        for shard in rotated {
            match snapshot.shards.get(&shard) {
                None => free.push(Step::Acquire {
                    shard,
                    version: None,
                }),
                Some(l) if l.holder.as_deref().is_none_or(str::is_empty) => {
                    free.push(Step::Acquire {
                        shard,
                        version: Some(l.version.clone()),
                    })
                }
                Some(l) if l.live_holder(now).is_none() && l.holder.as_deref() != Some(me) => {
                    expired.push(Step::Acquire {
                        shard,
                        version: Some(l.version.clone()),
                    })
                }
                Some(_) => {}
            }
        }
        steps.extend(free.into_iter().chain(expired).take(wanted));
    }
    for (name, lease) in &snapshot.members {
        if name != my_member
            && lease
                .expired_for(now)
                .is_some_and(|d| d >= rules.forget_members_after)
        {
            steps.push(Step::ForgetMember {
                name: name.clone(),
                version: lease.version.clone(),
            });
        }
    }
    Plan {
        members,
        share,
        steps,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn now() -> Timestamp {
        Timestamp::from_second(1_800_000_000).expect("time")
    }

    fn held(by: &str, ago_secs: i64) -> LeaseView {
        LeaseView {
            holder: Some(by.into()),
            renewed: Some(now() - jiff::SignedDuration::from_secs(ago_secs)),
            duration: D,
            version: format!("rv-{by}-{ago_secs}"),
        }
    }

    fn free() -> LeaseView {
        LeaseView {
            holder: None,
            renewed: Some(now() - jiff::SignedDuration::from_secs(100)),
            duration: D,
            version: "rv-free".into(),
        }
    }

    fn rules(shards: u32) -> Rules {
        Rules {
            shards,
            forget_members_after: Duration::from_secs(600),
        }
    }

    fn snapshot(members: &[&str], shards: &[(u32, LeaseView)]) -> Snapshot {
        Snapshot {
            shards: shards.iter().cloned().collect(),
            members: members.iter().map(|m| (member(m), held(m, 1))).collect(),
        }
    }

    fn member(m: &str) -> String {
        format!("exact-operator-member-{m}")
    }

    fn acquired(p: &Plan) -> Vec<u32> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Acquire { shard, .. } => Some(*shard),
                _ => None,
            })
            .collect()
    }

    fn released(p: &Plan) -> Vec<u32> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Release { shard, .. } => Some(*shard),
                _ => None,
            })
            .collect()
    }

    fn renewed(p: &Plan) -> Vec<u32> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::Renew { shard, .. } => Some(*shard),
                _ => None,
            })
            .collect()
    }

    /// Applies every replica's plan in turn (as the API server would serialise them) until
    /// nothing changes; returns the holders by shard.
    fn settle(replicas: &[&str], shards: u32) -> BTreeMap<u32, String> {
        let mut s = snapshot(replicas, &[]);
        for _round in 0..10 {
            let mut changed = false;
            for me in replicas {
                let p = plan(&s, me, &member(me), now(), &rules(shards));
                for step in p.steps {
                    match step {
                        Step::Acquire { shard, .. } => {
                            s.shards.insert(shard, held(me, 0));
                            changed = true;
                        }
                        Step::Release { shard, .. } => {
                            s.shards.insert(shard, free());
                            changed = true;
                        }
                        Step::Renew { .. } | Step::ForgetMember { .. } => {}
                    }
                }
            }
            if !changed {
                break;
            }
        }
        s.shards
            .into_iter()
            .filter_map(|(i, l)| Some((i, l.holder?)))
            .collect()
    }

    fn counts(holders: &BTreeMap<u32, String>) -> BTreeMap<String, usize> {
        let mut c = BTreeMap::new();
        for h in holders.values() {
            *c.entry(h.clone()).or_insert(0) += 1;
        }
        c
    }

    #[test]
    fn one_member_takes_every_shard() {
        let p = plan(&Snapshot::default(), "a", &member("a"), now(), &rules(4));
        assert_eq!((p.members, p.share), (1, 4));
        let mut got = acquired(&p);
        got.sort();
        assert_eq!(got, vec![0, 1, 2, 3]);
        assert!(p
            .steps
            .iter()
            .all(|s| matches!(s, Step::Acquire { version: None, .. })));
    }

    #[test]
    fn fair_share_with_one_two_and_three_members() {
        for (replicas, shards, want) in [
            (vec!["a"], 6, vec![6]),
            (vec!["a", "b"], 6, vec![3, 3]),
            (vec!["a", "b", "c"], 6, vec![2, 2, 2]),
            (vec!["a", "b", "c"], 8, vec![3, 3, 2]),
        ] {
            let holders = settle(&replicas, shards);
            assert_eq!(holders.len(), shards as usize, "every shard held");
            let mut got: Vec<usize> = counts(&holders).into_values().collect();
            got.sort_by(|x, y| y.cmp(x));
            assert_eq!(got, want, "{replicas:?} over {shards}");
        }
    }

    #[test]
    fn balanced_holdings_only_renew() {
        let s = snapshot(
            &["a", "b", "c"],
            &[
                (0, held("a", 3)),
                (1, held("a", 3)),
                (2, held("b", 3)),
                (3, held("b", 3)),
                (4, held("c", 3)),
                (5, held("c", 3)),
            ],
        );
        for me in ["a", "b", "c"] {
            let p = plan(&s, me, &member(me), now(), &rules(6));
            assert_eq!(p.share, 2);
            assert_eq!(renewed(&p).len(), 2, "{me}");
            assert_eq!(p.steps.len(), 2, "{me}: renewals only, {:?}", p.steps);
        }
        // 3 + 3 + 2 over 8 is balanced too: the one with 2 finds nothing free.
        let s = snapshot(
            &["a", "b", "c"],
            &[
                (0, held("a", 3)),
                (1, held("a", 3)),
                (2, held("a", 3)),
                (3, held("b", 3)),
                (4, held("b", 3)),
                (5, held("b", 3)),
                (6, held("c", 3)),
                (7, held("c", 3)),
            ],
        );
        let p = plan(&s, "c", &member("c"), now(), &rules(8));
        assert_eq!((p.share, p.steps.len()), (3, 2), "{:?}", p.steps);
    }

    #[test]
    fn a_dead_holders_expired_shards_are_taken() {
        // c died 20 s ago: its member Lease and shards ran out; a and b share 6 as 3 + 3.
        let mut s = snapshot(
            &["a", "b"],
            &[
                (0, held("a", 3)),
                (1, held("a", 3)),
                (2, held("b", 3)),
                (3, held("b", 3)),
                (4, held("c", 20)),
                (5, held("c", 20)),
            ],
        );
        s.members.insert(member("c"), held("c", 20));
        let p = plan(&s, "a", &member("a"), now(), &rules(6));
        assert_eq!((p.members, p.share), (2, 3));
        let got = acquired(&p);
        assert_eq!(got.len(), 1);
        assert!(got[0] == 4 || got[0] == 5);
        assert!(p.steps.iter().any(|st| matches!(st,
            Step::Acquire { version: Some(v), .. } if v == "rv-c-20")));
        // A live holder's shard is never taken.
        let s = snapshot(&["a", "c"], &[(4, held("c", 14))]);
        let p = plan(&s, "a", &member("a"), now(), &rules(6));
        assert!(!acquired(&p).contains(&4));
    }

    #[test]
    fn extras_are_released_when_a_member_joins() {
        // a held all 6 alone; b and c joined.
        let shards: Vec<(u32, LeaseView)> = (0..6).map(|i| (i, held("a", 3))).collect();
        let s = snapshot(&["a", "b", "c"], &shards);
        let p = plan(&s, "a", &member("a"), now(), &rules(6));
        assert_eq!(p.share, 2);
        assert_eq!(renewed(&p), vec![0, 1]);
        assert_eq!(released(&p), vec![2, 3, 4, 5]);
        assert!(acquired(&p).is_empty());
        // The newcomers take the released (free) shards, free before expired.
        let mut s = s;
        for i in 2..6 {
            s.shards.insert(i, free());
        }
        let p = plan(&s, "b", &member("b"), now(), &rules(6));
        assert_eq!(acquired(&p).len(), 2);
    }

    #[test]
    fn a_lost_conditional_update_is_decided_again_next_tick() {
        // a and b both saw shard 3 free and both tried; b won (the API server refused a's
        // write with 409). a's next listing shows b as holder: a does not touch it.
        let s = snapshot(&["a", "b"], &[(0, held("a", 1)), (3, held("b", 0))]);
        let p = plan(&s, "a", &member("a"), now(), &rules(2));
        assert_eq!(p.share, 1);
        assert_eq!(renewed(&p), vec![0]);
        assert!(acquired(&p).is_empty() && released(&p).is_empty());
        // Shards beyond the configured count (an older, larger setting) are ignored.
        let s = snapshot(&["a"], &[(7, held("a", 1))]);
        let p = plan(&s, "a", &member("a"), now(), &rules(2));
        assert!(!renewed(&p).contains(&7) && !released(&p).contains(&7));
    }

    #[test]
    fn long_gone_members_are_forgotten_but_never_me() {
        let mut s = snapshot(&["a"], &[]);
        s.members.insert(member("old"), held("old", 3600));
        s.members.insert(member("recent"), held("recent", 30));
        s.members.insert(member("a"), held("a", 3600));
        let p = plan(&s, "a", &member("a"), now(), &rules(1));
        let forgotten: Vec<&Step> = p
            .steps
            .iter()
            .filter(|s| matches!(s, Step::ForgetMember { .. }))
            .collect();
        assert_eq!(
            forgotten,
            vec![&Step::ForgetMember {
                name: member("old"),
                version: "rv-old-3600".into()
            }]
        );
    }

    #[test]
    fn starting_offsets_spread_replicas() {
        let offsets: BTreeSet<u32> = ["op-a", "op-b", "op-c", "op-d"]
            .iter()
            .filter_map(|me| {
                let p = plan(&Snapshot::default(), me, &member(me), now(), &rules(1000));
                acquired(&p).first().copied()
            })
            .collect();
        assert!(offsets.len() > 1, "{offsets:?}");
    }
}
