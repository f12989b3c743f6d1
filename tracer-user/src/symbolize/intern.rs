//! One shared copy of each distinct value (the frames of row keys): thousands of stacks through
//! the same functions hold pointers to the same keys, not copies of their names and paths.
use std::{collections::HashSet, hash::Hash, sync::Arc};

/// The distinct values seen, each kept once.
#[derive(Debug)]
pub struct Interner<T> {
    values: HashSet<Arc<T>>,
}

impl<T> Default for Interner<T> {
    fn default() -> Self {
        Self {
            values: HashSet::new(),
        }
    }
}

impl<T: Eq + Hash> Interner<T> {
    /// The shared copy of `value` (kept from now on if it is new).
    pub fn intern(&mut self, value: T) -> Arc<T> {
        if let Some(shared) = self.values.get(&value) {
            return Arc::clone(shared);
        }
        let shared = Arc::new(value);
        self.values.insert(Arc::clone(&shared));
        shared
    }

    /// How many distinct values are kept.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_values_share_one_copy() {
        let mut names = Interner::default();
        let a = names.intern("path_a".to_owned());
        let b = names.intern("path_b".to_owned());
        let again = names.intern("path_a".to_owned());
        assert!(Arc::ptr_eq(&a, &again));
        assert!(!Arc::ptr_eq(&a, &b));
        assert_eq!(names.len(), 2);
    }
}
