//! GetPreferredAllocation: which of a pool's free devices kubelet should hand to a container.
//!
//! The answer is advisory (kubelet fills any gap itself), so it never fails: it honours
//! `must_include`, then keeps the container on one NUMA node when one can hold the whole request,
//! then either packs the devices onto the fewest PFs (the default, which keeps whole PFs free for
//! large requests) or spreads them across PFs (one VF per PF first, for redundancy).
//!
//! Every choice breaks ties by PCI address, so the same request always gets the same answer.

use crate::config::AllocationPolicy;
use std::collections::{BTreeMap, BTreeSet};

/// A device as the allocator sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The device ID kubelet knows (the VF's PCI address).
    pub id: String,
    /// The PF it belongs to (its PCI address; a PF's own for a PF device).
    pub pf: String,
    /// None when the device reports no NUMA affinity.
    pub numa: Option<u32>,
}

/// One container's request, as kubelet sends it.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub available: &'a [String],
    pub must_include: &'a [String],
    pub size: usize,
}

/// The preferred device IDs for `request`, sorted.
///
/// `devices` are the pool's devices; available IDs that are not among them are never preferred
/// (kubelet may still hand them out). The result holds every `must_include` ID and at most
/// `size` IDs in all (more only when `must_include` alone is larger).
pub fn preferred(
    devices: &[Candidate],
    request: Request<'_>,
    policy: AllocationPolicy,
) -> Vec<String> {
    let by_id: BTreeMap<&str, &Candidate> = devices.iter().map(|d| (d.id.as_str(), d)).collect();
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    // Devices already holding the container: their PFs and NUMA nodes attract the rest.
    let mut placed: Vec<&Candidate> = Vec::new();
    for id in request.must_include {
        if chosen.insert(id.as_str()) {
            if let Some(d) = by_id.get(id.as_str()) {
                placed.push(d);
            }
        }
    }
    let mut need = request.size.saturating_sub(chosen.len());
    if need == 0 {
        return sorted(chosen);
    }
    let mut free: Vec<&Candidate> = request
        .available
        .iter()
        .filter(|id| !chosen.contains(id.as_str()))
        .filter_map(|id| by_id.get(id.as_str()).copied())
        .collect();
    free.sort_by(|a, b| a.id.cmp(&b.id));
    free.dedup_by(|a, b| a.id == b.id);

    for group in numa_order(&free, &placed, need, policy) {
        if need == 0 {
            break;
        }
        let mut pool: Vec<&Candidate> = free.iter().copied().filter(|d| d.numa == group).collect();
        let picked = match policy {
            AllocationPolicy::Pack => pick_packed(&mut pool, &placed, need),
            AllocationPolicy::Spread => pick_spread(&mut pool, &placed, need),
        };
        need -= picked.len();
        for d in picked {
            chosen.insert(d.id.as_str());
            placed.push(d);
        }
    }
    sorted(chosen)
}

fn sorted(ids: BTreeSet<&str>) -> Vec<String> {
    ids.into_iter().map(str::to_string).collect()
}

/// The order in which NUMA nodes are drawn from: nodes already holding `must_include` devices
/// first, then nodes that can hold the whole rest (pack: the tightest fit, keeping roomier nodes
/// for larger requests; spread: the roomiest), then the others, largest first.
fn numa_order(
    free: &[&Candidate],
    placed: &[&Candidate],
    need: usize,
    policy: AllocationPolicy,
) -> Vec<Option<u32>> {
    let mut counts: BTreeMap<Option<u32>, usize> = BTreeMap::new();
    for d in free {
        *counts.entry(d.numa).or_default() += 1;
    }
    let home: BTreeSet<Option<u32>> = placed.iter().map(|d| d.numa).collect();
    let mut groups: Vec<(Option<u32>, usize)> = counts.into_iter().collect();
    groups.sort_by_key(|&(numa, count)| {
        let fits = count >= need;
        let size_key = match (fits, policy) {
            (true, AllocationPolicy::Pack) => count as i64,
            _ => -(count as i64),
        };
        // None (no affinity) sorts after every real node at equal rank.
        (!home.contains(&numa), !fits, size_key, numa.is_none(), numa)
    });
    groups.into_iter().map(|(numa, _)| numa).collect()
}

/// How many devices of each PF are already placed.
fn pf_usage<'a>(placed: &[&'a Candidate]) -> BTreeMap<&'a str, usize> {
    let mut used = BTreeMap::new();
    for d in placed {
        *used.entry(d.pf.as_str()).or_default() += 1;
    }
    used
}

/// Free devices grouped by PF, each group in PCI order.
fn by_pf<'a>(pool: &[&'a Candidate]) -> BTreeMap<&'a str, Vec<&'a Candidate>> {
    let mut out: BTreeMap<&str, Vec<&Candidate>> = BTreeMap::new();
    for d in pool {
        out.entry(d.pf.as_str()).or_default().push(d);
    }
    out
}

/// Takes `need` devices, PF by PF: each round picks the PF that `rank` orders first (given its
/// name, its free devices, how many of the container's devices it already holds, and what is
/// still needed) and takes up to `per_round(need)` devices from it.
fn pick<'a, K: Ord>(
    pool: &mut Vec<&'a Candidate>,
    placed: &[&'a Candidate],
    mut need: usize,
    per_round: impl Fn(usize) -> usize,
    rank: impl Fn(&str, usize, Option<usize>, usize) -> K,
) -> Vec<&'a Candidate> {
    let mut used = pf_usage(placed);
    let mut out = Vec::new();
    while need > 0 {
        let groups = by_pf(pool);
        let Some((pf, devices)) = groups
            .into_iter()
            .min_by_key(|(pf, devs)| rank(pf, devs.len(), used.get(pf).copied(), need))
        else {
            break;
        };
        let take: Vec<&Candidate> = devices.into_iter().take(per_round(need)).collect();
        need -= take.len();
        *used.entry(pf).or_default() += take.len();
        pool.retain(|d| !take.iter().any(|t| t.id == d.id));
        out.extend(take);
    }
    out
}

/// Pack: fill PFs the container already uses, then the PF that fits the rest most tightly; when
/// none fits, drain the roomiest PF and look again.
fn pick_packed<'a>(
    pool: &mut Vec<&'a Candidate>,
    placed: &[&'a Candidate],
    need: usize,
) -> Vec<&'a Candidate> {
    pick(
        pool,
        placed,
        need,
        |need| need,
        |pf, free, used, need| {
            let fits = free >= need;
            let size_key = if fits { free as i64 } else { -(free as i64) };
            (used.is_none(), !fits, size_key, pf.to_string())
        },
    )
}

/// Spread: one device at a time from the PF holding the fewest of the container's devices
/// (ties: the PF with the most free devices, then PCI order).
fn pick_spread<'a>(
    pool: &mut Vec<&'a Candidate>,
    placed: &[&'a Candidate],
    need: usize,
) -> Vec<&'a Candidate> {
    pick(
        pool,
        placed,
        need,
        |_| 1,
        |pf, free, used, _| (used.unwrap_or(0), std::cmp::Reverse(free), pf.to_string()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `pfs` PFs × `vfs` VFs; PF i on NUMA node `numa(i)`.
    fn node(pfs: u32, vfs: u32, numa: impl Fn(u32) -> Option<u32>) -> Vec<Candidate> {
        let mut out = Vec::new();
        for p in 0..pfs {
            for v in 0..vfs {
                out.push(Candidate {
                    id: format!("0000:{:02x}:02.{v}", 0x3b + p),
                    pf: format!("0000:{:02x}:00.0", 0x3b + p),
                    numa: numa(p),
                });
            }
        }
        out
    }

    fn ids(devs: &[Candidate]) -> Vec<String> {
        devs.iter().map(|d| d.id.clone()).collect()
    }

    fn pfs_of(devs: &[Candidate], chosen: &[String]) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for id in chosen {
            let d = devs.iter().find(|d| &d.id == id).unwrap();
            *m.entry(d.pf.clone()).or_default() += 1;
        }
        m
    }

    #[test]
    fn pack_fills_one_pf() {
        let devs = node(4, 4, |_| None);
        let avail = ids(&devs);
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 3,
            },
            AllocationPolicy::Pack,
        );
        assert_eq!(got.len(), 3);
        assert_eq!(pfs_of(&devs, &got).len(), 1, "{got:?}");
        // Deterministic: the first PF in PCI order.
        assert_eq!(got, vec!["0000:3b:02.0", "0000:3b:02.1", "0000:3b:02.2"]);
    }

    #[test]
    fn pack_prefers_tightest_pf() {
        let devs = node(3, 4, |_| None);
        // PF 0 has 4 free, PF 1 has 2 free, PF 2 has 3 free: 2 devices go to PF 1.
        let avail: Vec<String> = ids(&devs)
            .into_iter()
            .filter(|id| !["0000:3c:02.0", "0000:3c:02.1", "0000:3d:02.0"].contains(&id.as_str()))
            .collect();
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 2,
            },
            AllocationPolicy::Pack,
        );
        assert_eq!(got, vec!["0000:3c:02.2", "0000:3c:02.3"]);
        // 6 devices: no PF fits; take the roomiest (PF 0, 4), then the tightest fit for 2 (PF 1).
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 6,
            },
            AllocationPolicy::Pack,
        );
        let pfs = pfs_of(&devs, &got);
        assert_eq!(pfs.len(), 2, "{got:?}");
        assert_eq!(pfs.get("0000:3b:00.0"), Some(&4));
    }

    #[test]
    fn spread_uses_every_pf() {
        let devs = node(4, 4, |_| None);
        let avail = ids(&devs);
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 4,
            },
            AllocationPolicy::Spread,
        );
        assert_eq!(
            pfs_of(&devs, &got).values().copied().collect::<Vec<_>>(),
            vec![1, 1, 1, 1]
        );
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 6,
            },
            AllocationPolicy::Spread,
        );
        assert!(pfs_of(&devs, &got).values().all(|&n| n <= 2));
    }

    #[test]
    fn must_include_is_kept_and_attracts() {
        let devs = node(4, 4, |_| None);
        let avail = ids(&devs);
        let must = vec!["0000:3d:02.2".to_string()];
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &must,
                size: 3,
            },
            AllocationPolicy::Pack,
        );
        assert!(got.contains(&must[0]));
        assert_eq!(
            pfs_of(&devs, &got).len(),
            1,
            "packed next to the must-include: {got:?}"
        );
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &must,
                size: 3,
            },
            AllocationPolicy::Spread,
        );
        assert!(got.contains(&must[0]));
        assert_eq!(pfs_of(&devs, &got).len(), 3, "{got:?}");
        // must_include larger than size: all of it, nothing else.
        let must: Vec<String> = avail[..3].to_vec();
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &must,
                size: 2,
            },
            AllocationPolicy::Pack,
        );
        assert_eq!(got, must);
    }

    #[test]
    fn single_numa_node_preferred() {
        // PFs 0,1 on node 0; PFs 2,3 on node 1. Only PF 0 has one free VF; node 1 has 8.
        let devs = node(4, 4, |p| Some(if p < 2 { 0 } else { 1 }));
        let avail: Vec<String> = ids(&devs)
            .into_iter()
            .filter(|id| {
                id.starts_with("0000:3b:02.0")
                    || id.starts_with("0000:3d")
                    || id.starts_with("0000:3e")
            })
            .collect();
        for policy in [AllocationPolicy::Pack, AllocationPolicy::Spread] {
            let got = preferred(
                &devs,
                Request {
                    available: &avail,
                    must_include: &[],
                    size: 2,
                },
                policy,
            );
            assert!(
                got.iter()
                    .all(|id| id.starts_with("0000:3d") || id.starts_with("0000:3e")),
                "{policy:?} {got:?}"
            );
        }
        // A must-include on node 0 keeps the container on node 0 as far as possible.
        let all = ids(&devs);
        let must = vec!["0000:3b:02.0".to_string()];
        let got = preferred(
            &devs,
            Request {
                available: &all,
                must_include: &must,
                size: 4,
            },
            AllocationPolicy::Spread,
        );
        assert!(
            got.iter()
                .all(|id| id.starts_with("0000:3b") || id.starts_with("0000:3c")),
            "{got:?}"
        );
    }

    #[test]
    fn unknown_ids_and_short_supply() {
        let devs = node(1, 2, |_| None);
        let avail = vec!["0000:3b:02.0".to_string(), "0000:99:00.0".to_string()];
        let got = preferred(
            &devs,
            Request {
                available: &avail,
                must_include: &[],
                size: 2,
            },
            AllocationPolicy::Pack,
        );
        assert_eq!(got, vec!["0000:3b:02.0"]);
        let got = preferred(
            &devs,
            Request {
                available: &[],
                must_include: &[],
                size: 0,
            },
            AllocationPolicy::Pack,
        );
        assert!(got.is_empty());
    }
}
