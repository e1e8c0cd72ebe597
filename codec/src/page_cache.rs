//! A bounded in-memory cache of pages with a little metadata each (their
//! fingerprint), CLOCK eviction under a page-count cap. The encoder keys it
//! by gfn (the version of each page last sent: delta base, reference
//! verification, NACK answer); the decoder keys it by fingerprint (content
//! received this session). The pages themselves live in a `PageSlab`
//! (slot `i`'s page at slab index `i`).

use std::collections::HashMap;
use std::hash::Hash;

use crate::fingerprint::Fingerprint;
use crate::page::PageBytes;
use crate::slab::PageSlab;

struct Slot<K, M> {
    key: K,
    meta: M,
    referenced: bool,
    live: bool,
}

/// key → (metadata, content), at most `capacity` pages. The metadata is
/// the content's fingerprint unless the user chooses otherwise.
pub struct PageCache<K, M = Fingerprint> {
    slots: Vec<Slot<K, M>>,
    data: PageSlab,
    index: HashMap<K, usize>,
    free: Vec<usize>,
    hand: usize,
    capacity: usize,
}

impl<K: Hash + Eq + Copy, M> PageCache<K, M> {
    pub fn new(capacity_pages: usize) -> Self {
        PageCache {
            slots: Vec::new(),
            data: PageSlab::new(),
            index: HashMap::new(),
            free: Vec::new(),
            hand: 0,
            capacity: capacity_pages,
        }
    }

    pub fn len(&self) -> usize {
        self.index.len()
    }

    pub fn is_empty(&self) -> bool {
        self.index.is_empty()
    }

    /// The entry under `key`, if still cached (marks it recently used).
    pub fn get(&mut self, key: K) -> Option<(&M, &PageBytes)> {
        let (meta, data) = self.get_mut(key)?;
        Some((meta, data))
    }

    /// Like [`PageCache::get`], with the metadata writable (to fill in
    /// something computed lazily from the content).
    pub fn get_mut(&mut self, key: K) -> Option<(&mut M, &PageBytes)> {
        let &i = self.index.get(&key)?;
        let s = &mut self.slots[i];
        s.referenced = true;
        Some((&mut s.meta, self.data.get(i)))
    }

    /// Stores `page` (described by `meta`) under `key`, replacing what was
    /// there.
    pub fn put(&mut self, key: K, meta: M, page: &PageBytes) {
        if self.capacity == 0 {
            return;
        }
        if let Some(&i) = self.index.get(&key) {
            let s = &mut self.slots[i];
            s.meta = meta;
            s.referenced = true;
            self.data.get_mut(i).copy_from_slice(page);
            return;
        }
        let i = if let Some(i) = self.free.pop() {
            i
        } else if self.slots.len() < self.capacity {
            self.slots.push(Slot {
                key,
                meta,
                referenced: true,
                live: true,
            });
            self.data.push(page);
            self.index.insert(key, self.slots.len() - 1);
            return;
        } else {
            self.victim()
        };
        let s = &mut self.slots[i];
        s.key = key;
        s.meta = meta;
        s.referenced = true;
        self.data.get_mut(i).copy_from_slice(page);
        s.live = true;
        self.index.insert(key, i);
    }

    /// Forgets `key`; returns whether it was cached.
    pub fn remove(&mut self, key: K) -> bool {
        let Some(i) = self.index.remove(&key) else {
            return false;
        };
        self.slots[i].live = false;
        self.free.push(i);
        true
    }

    /// CLOCK: the first live slot without its referenced bit, clearing bits
    /// on the way; evicts it and returns its index.
    fn victim(&mut self) -> usize {
        loop {
            let i = self.hand;
            self.hand = (self.hand + 1) % self.slots.len();
            let s = &mut self.slots[i];
            if !s.live {
                continue;
            }
            if s.referenced {
                s.referenced = false;
                continue;
            }
            self.index.remove(&s.key);
            s.live = false;
            return i;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::page::{Gfn, PAGE_SIZE};

    #[test]
    fn bounded_and_keeps_recently_used() {
        let mut c: PageCache<Gfn> = PageCache::new(4);
        let page = |b: u8| [b; PAGE_SIZE];
        for g in 0..4u8 {
            c.put(Gfn(g as u64), Fingerprint::of(&page(g)), &page(g));
        }
        // A fifth page sweeps every referenced bit clear and evicts the oldest.
        c.put(Gfn(10), Fingerprint::of(&page(10)), &page(10));
        assert_eq!(c.len(), 4);
        assert!(c.get(Gfn(0)).is_none(), "oldest unreferenced evicted first");
        c.get(Gfn(1));
        c.put(Gfn(11), Fingerprint::of(&page(11)), &page(11));
        assert!(c.get(Gfn(1)).is_some(), "recently used page kept");
        assert_eq!(c.len(), 4);
        let (fp, data) = c.get(Gfn(11)).unwrap();
        assert_eq!(*fp, Fingerprint::of(&page(11)));
        assert_eq!(data[0], 11);
        c.remove(Gfn(11));
        assert!(c.get(Gfn(11)).is_none());
        assert_eq!(c.len(), 3);
    }
}
