//! A persistent dense array indexed by key slot (`KeyId::as_usize`): a
//! radix tree of 32-wide nodes, shared structurally between clones. Reads
//! are a few indexed loads (no hashing, no lock); a clone is one reference
//! count; a write copies the path to its element (once per clone: later
//! writes to the same path reuse the copy). Used beside an input table
//! (`engine/storage.rs`, `InputTable`) so that a walk finds an input's
//! `changed_at` by its key id.

use std::sync::Arc;

const BITS: u32 = 5;
const WIDTH: usize = 1 << BITS;
const MASK: usize = WIDTH - 1;

#[derive(Clone)]
enum Node<T> {
    Leaf(Arc<[T; WIDTH]>),
    Branch(Arc<[Option<Node<T>>; WIDTH]>),
}

/// A persistent array of `T`s; every index not written reads as `fill`.
#[derive(Clone)]
pub(crate) struct DenseMap<T: Copy> {
    root: Option<Node<T>>,
    /// Levels of branches above the leaves.
    depth: u32,
    fill: T,
    /// One past the largest index written (what the tree covers).
    len: usize,
}

impl<T: Copy> DenseMap<T> {
    pub(crate) fn new(fill: T) -> Self {
        DenseMap {
            root: None,
            depth: 0,
            fill,
            len: 0,
        }
    }

    /// One past the largest index ever written.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The element at `index` (`fill` if never written).
    #[inline]
    pub(crate) fn get(&self, index: usize) -> T {
        if index >= self.len {
            return self.fill;
        }
        let mut node = match &self.root {
            Some(node) => node,
            None => return self.fill,
        };
        let mut level = self.depth;
        loop {
            match node {
                Node::Leaf(leaf) => return leaf[index & MASK],
                Node::Branch(children) => {
                    match &children[(index >> (BITS * level)) & MASK] {
                        Some(child) => node = child,
                        None => return self.fill,
                    }
                    level = level.saturating_sub(1);
                }
            }
        }
    }

    /// Sets the element at `index`.
    pub(crate) fn set(&mut self, index: usize, value: T) {
        // Grow until the tree covers `index`.
        while (index >> (BITS * (self.depth + 1))) != 0 {
            let Some(old) = self.root.take() else {
                break;
            };
            let mut children: [Option<Node<T>>; WIDTH] = std::array::from_fn(|_| None);
            children[0] = Some(old);
            self.root = Some(Node::Branch(Arc::new(children)));
            self.depth += 1;
        }
        if self.root.is_none() {
            // An empty tree starts as deep as `index` needs.
            let mut depth = 0;
            while (index >> (BITS * (depth + 1))) != 0 {
                depth += 1;
            }
            self.depth = depth;
            self.root = Some(self.fresh(depth));
        }
        let fill = self.fill;
        let mut level = self.depth;
        let mut node = match self.root.as_mut() {
            Some(node) => node,
            None => return,
        };
        loop {
            match node {
                Node::Leaf(leaf) => {
                    Arc::make_mut(leaf)[index & MASK] = value;
                    break;
                }
                Node::Branch(children) => {
                    let slot = &mut Arc::make_mut(children)[(index >> (BITS * level)) & MASK];
                    level = level.saturating_sub(1);
                    node = slot.get_or_insert_with(|| {
                        if level == 0 {
                            Node::Leaf(Arc::new([fill; WIDTH]))
                        } else {
                            Node::Branch(Arc::new(std::array::from_fn(|_| None)))
                        }
                    });
                }
            }
        }
        self.len = self.len.max(index + 1);
    }

    fn fresh(&self, level: u32) -> Node<T> {
        if level == 0 {
            Node::Leaf(Arc::new([self.fill; WIDTH]))
        } else {
            Node::Branch(Arc::new(std::array::from_fn(|_| None)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_what_was_written_and_clones_are_independent() {
        let mut a = DenseMap::new(0u64);
        assert_eq!(a.get(5), 0);
        a.set(3, 30);
        let before = a.clone();
        for i in [0usize, 31, 32, 1023, 1024, 40_000, 5, 3] {
            a.set(i, i as u64 + 1);
        }
        for i in [0usize, 31, 32, 1023, 1024, 40_000, 5, 3] {
            assert_eq!(a.get(i), i as u64 + 1, "index {i}");
        }
        assert_eq!(a.get(6), 0);
        assert_eq!(a.get(40_001), 0);
        assert_eq!(a.get(usize::MAX), 0);
        assert_eq!(before.get(3), 30);
        assert_eq!(before.get(1024), 0);
        assert_eq!(a.len(), 40_001);
        // A large first index, then small ones.
        let mut b = DenseMap::new(7u8);
        b.set(1 << 20, 1);
        b.set(0, 2);
        assert_eq!((b.get(1 << 20), b.get(0), b.get(1)), (1, 2, 7));
    }

    #[test]
    fn matches_a_vector_model_across_clones() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut versions: Vec<(DenseMap<u32>, Vec<u32>)> = vec![(DenseMap::new(0), vec![])];
        for step in 0..4_000u32 {
            let pick = (next() as usize) % versions.len();
            let (mut map, mut model) = versions[pick].clone();
            let index = match next() % 3 {
                0 => (next() % 40) as usize,
                1 => (next() % 2_000) as usize,
                _ => (next() % 70_000) as usize,
            };
            map.set(index, step + 1);
            if model.len() <= index {
                model.resize(index + 1, 0);
            }
            model[index] = step + 1;
            versions.push((map, model));
            if versions.len() > 20 {
                versions.remove((next() as usize) % versions.len());
            }
        }
        for (map, model) in &versions {
            for (i, v) in model.iter().enumerate() {
                assert_eq!(map.get(i), *v);
            }
            assert_eq!(map.get(model.len()), 0);
        }
    }
}
