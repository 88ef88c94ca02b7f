//! Routing: which shard owns an account. A pure function of the account id
//! and the shard count, which is fixed when a store is created and recorded
//! in it.

use crate::types::{AccountId, ShardId};

/// Shards per engine, at most (shard sets are 64-bit masks).
pub const SHARDS_MAX: u16 = 64;

/// The shard that owns `account` among `shards` shards.
///
/// The id is mixed (SplitMix64's finaliser) before the modulo so that
/// sequential ids, and ids sharing low bits, spread evenly.
pub fn shard_of(account: AccountId, shards: u16) -> ShardId {
    debug_assert!((1..=SHARDS_MAX).contains(&shards));
    let mut z = account.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    ShardId((z % u64::from(shards.max(1))) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_owns_everything() {
        for id in 0..1_000 {
            assert_eq!(shard_of(AccountId(id), 1), ShardId(0));
        }
    }

    #[test]
    fn routing_is_in_range_and_reaches_every_shard() {
        for shards in [2u16, 3, 8, 64] {
            let mut reached = vec![false; usize::from(shards)];
            for id in (0..10_000u64).map(|i| i.wrapping_mul(0x1_0001)) {
                let a = shard_of(AccountId(id), shards);
                assert!(a.0 < shards, "{id} to shard {} of {shards}", a.0);
                reached[usize::from(a.0)] = true;
            }
            assert!(reached.iter().all(|&r| r), "{shards} shards: {reached:?}");
        }
    }

    #[test]
    fn sequential_ids_spread_evenly() {
        let shards = 8u16;
        let mut counts = [0u32; 8];
        for id in 0..80_000u64 {
            counts[usize::from(shard_of(AccountId(id), shards).0)] += 1;
        }
        for (shard, &n) in counts.iter().enumerate() {
            assert!(
                (9_000..11_000).contains(&n),
                "shard {shard} got {n} of 80000"
            );
        }
    }

    #[test]
    fn known_values_never_change() {
        // Routing is part of the on-disk format: a store created with N
        // shards must route every account the same way forever.
        let got: Vec<u16> = (0..8).map(|id| shard_of(AccountId(id), 4).0).collect();
        assert_eq!(got, [3, 1, 2, 1, 2, 2, 0, 3]);
        // Computed outside Rust (SplitMix64's finaliser, then the modulo),
        // for small, business-layer-sized and extreme ids.
        let ids = [
            0,
            1,
            2,
            3,
            1_000,
            123_456_789,
            10_000_000_000_000_101,
            30_000_000_000_000_302,
            90_000_000_000_001_104,
            1 << 63,
            u64::MAX,
        ];
        let expected: [(u16, [u16; 11]); 4] = [
            (2, [1, 1, 0, 1, 0, 1, 1, 0, 0, 1, 0]),
            (3, [1, 2, 1, 0, 1, 2, 1, 1, 2, 1, 2]),
            (8, [7, 1, 6, 5, 0, 1, 7, 0, 0, 3, 0]),
            (64, [47, 1, 14, 45, 8, 57, 31, 16, 24, 27, 32]),
        ];
        for (shards, want) in expected {
            let got: Vec<u16> = ids
                .iter()
                .map(|&id| shard_of(AccountId(id), shards).0)
                .collect();
            assert_eq!(got, want, "{shards} shards");
        }
    }
}
