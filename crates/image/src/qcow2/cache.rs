//! A small bounded cache of metadata tables keyed by their host offset,
//! evicting the least recently used entry. Tables are written through to
//! the file as they change, so eviction never writes.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Keys are cluster-aligned file offsets: a multiplicative mix spreads them
/// well and costs a fraction of SipHash on the hot path.
#[derive(Default)]
pub(crate) struct OffsetHasher(u64);

impl Hasher for OffsetHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (v >> 9).wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29);
    }
}

pub(crate) struct Cache<T> {
    map: HashMap<u64, (T, u64), BuildHasherDefault<OffsetHasher>>,
    cap: usize,
    tick: u64,
}

impl<T> Cache<T> {
    pub fn new(cap: usize) -> Self {
        Cache {
            map: HashMap::default(),
            cap: cap.max(2),
            tick: 0,
        }
    }

    pub fn get(&mut self, key: u64) -> Option<&mut T> {
        self.tick += 1;
        let tick = self.tick;
        self.map.get_mut(&key).map(|(v, t)| {
            *t = tick;
            v
        })
    }

    pub fn contains(&self, key: u64) -> bool {
        self.map.contains_key(&key)
    }

    pub fn insert(&mut self, key: u64, value: T) -> &mut T {
        if self.map.len() >= self.cap && !self.map.contains_key(&key) {
            if let Some(victim) = self
                .map
                .iter()
                .min_by_key(|(_, (_, t))| *t)
                .map(|(k, _)| *k)
            {
                self.map.remove(&victim);
            }
        }
        self.tick += 1;
        let tick = self.tick;
        match self.map.entry(key) {
            std::collections::hash_map::Entry::Occupied(o) => {
                let slot = o.into_mut();
                *slot = (value, tick);
                &mut slot.0
            }
            std::collections::hash_map::Entry::Vacant(v) => &mut v.insert((value, tick)).0,
        }
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    pub fn remove(&mut self, key: u64) {
        self.map.remove(&key);
    }
}
