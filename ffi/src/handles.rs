//! Handles: what C holds is a number, not an address. Each live object sits in a registry
//! under a number that is never reused, so a freed, foreign or doubly freed handle is
//! `SHMEX_INVALID_HANDLE` instead of undefined behaviour, and a call in progress keeps its
//! object alive (an `Arc`) while another thread frees the handle.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::status::{shmex_status, Failure};

/// The next handle number, shared by all registries so that a number names one object of
/// one kind, ever. It does not wrap in practice (2^64 handles).
static NEXT_HANDLE: AtomicUsize = AtomicUsize::new(1);

/// The live objects of one kind.
pub(crate) struct Registry<T> {
    kind: &'static str,
    objects: Mutex<Option<HashMap<usize, Arc<T>>>>,
}

impl<T> Registry<T> {
    pub(crate) const fn new(kind: &'static str) -> Registry<T> {
        Registry {
            kind,
            objects: Mutex::new(None),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Option<HashMap<usize, Arc<T>>>> {
        self.objects.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Registers `object`; returns its handle (never 0).
    pub(crate) fn insert(&self, object: T) -> usize {
        let handle = NEXT_HANDLE.fetch_add(1, Ordering::Relaxed);
        self.lock()
            .get_or_insert_with(HashMap::new)
            .insert(handle, Arc::new(object));
        handle
    }

    /// The object of a live handle.
    pub(crate) fn get(&self, handle: usize) -> Result<Arc<T>, Failure> {
        if handle == 0 {
            return Err(Failure::null(&format!("the {} handle", self.kind)));
        }
        let found = self.lock().as_ref().and_then(|m| m.get(&handle).cloned());
        found.ok_or_else(|| self.not_live())
    }

    /// Unregisters a live handle; the object is dropped when the last call using it ends.
    /// The table is dropped when its last handle goes, so that a program that freed every
    /// handle holds no memory of ours (valgrind's leak check sees none).
    pub(crate) fn remove(&self, handle: usize) -> Result<Arc<T>, Failure> {
        let mut objects = self.lock();
        let removed = objects.as_mut().and_then(|m| m.remove(&handle));
        if objects.as_ref().is_some_and(HashMap::is_empty) {
            *objects = None;
        }
        drop(objects);
        removed.ok_or_else(|| self.not_live())
    }

    fn not_live(&self) -> Failure {
        Failure::new(
            shmex_status::SHMEX_INVALID_HANDLE,
            format!(
                "not a live {} handle (freed already, or not made by shmex)",
                self.kind
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_removed_handle_is_invalid_and_numbers_are_not_reused() {
        let registry = Registry::<u32>::new("test");
        let a = registry.insert(1);
        assert_eq!(*registry.get(a).unwrap(), 1);
        registry.remove(a).unwrap();
        let b = registry.insert(2);
        assert_ne!(a, b);
        assert_eq!(
            registry.get(a).unwrap_err().status,
            shmex_status::SHMEX_INVALID_HANDLE
        );
        assert_eq!(
            registry.remove(a).unwrap_err().status,
            shmex_status::SHMEX_INVALID_HANDLE
        );
        assert_eq!(
            registry.get(0).unwrap_err().status,
            shmex_status::SHMEX_NULL_POINTER
        );
    }
}
