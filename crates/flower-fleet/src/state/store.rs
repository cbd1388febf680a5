//! The content-addressed object store: reference-counted, so an object lives
//! exactly as long as some exchange in flight needs it.
//!
//! Every holder (an instruction waiting to be pulled, a reply being pushed)
//! takes one reference per distinct object id it names and gives it back
//! when it is done. The broadcast model is one set of ids shared by every
//! node's instruction, so it is stored once however many nodes pull it, and
//! dropped when the last of them confirmed or ended: memory stays
//! O(model × objects in flight).

use std::collections::HashMap;

use bytes::Bytes;
use flower_message::ObjectId;

#[derive(Debug)]
struct Entry {
    /// `None` while preregistered and not yet pushed.
    content: Option<Bytes>,
    refs: usize,
}

/// What [`ObjectStore::get`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// No such object (never stored, or collected).
    NotFound,
    /// Preregistered, its content not pushed yet.
    Pending,
    /// The content.
    Found(Bytes),
}

/// Reference-counted objects by id.
#[derive(Debug, Default)]
pub struct ObjectStore {
    objects: HashMap<ObjectId, Entry>,
    bytes: usize,
}

impl ObjectStore {
    /// Takes a reference to `id`, storing `content` if the object has none
    /// yet (`None` preregisters it). Returns whether the content is now
    /// present.
    pub fn hold(&mut self, id: ObjectId, content: Option<Bytes>) -> bool {
        let entry = self.objects.entry(id).or_insert(Entry {
            content: None,
            refs: 0,
        });
        entry.refs += 1;
        if entry.content.is_none() {
            if let Some(c) = content {
                self.bytes += c.len();
                entry.content = Some(c);
            }
        }
        entry.content.is_some()
    }

    /// Gives back one reference; the object goes with the last one.
    pub fn release(&mut self, id: &ObjectId) {
        if let Some(entry) = self.objects.get_mut(id) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                if let Some(c) = &entry.content {
                    self.bytes -= c.len();
                }
                self.objects.remove(id);
            }
        }
    }

    /// Stores the content of a held object (checked by the caller).
    /// Returns `false` when nobody holds `id`.
    pub fn fill(&mut self, id: &ObjectId, content: Bytes) -> bool {
        match self.objects.get_mut(id) {
            Some(entry) => {
                if entry.content.is_none() {
                    self.bytes += content.len();
                    entry.content = Some(content);
                }
                true
            }
            None => false,
        }
    }

    /// The object's state.
    pub fn get(&self, id: &ObjectId) -> Lookup {
        match self.objects.get(id) {
            None => Lookup::NotFound,
            Some(Entry { content: None, .. }) => Lookup::Pending,
            Some(Entry {
                content: Some(c), ..
            }) => Lookup::Found(c.clone()),
        }
    }

    /// The content, if present.
    pub fn content(&self, id: &ObjectId) -> Option<Bytes> {
        self.objects.get(id).and_then(|e| e.content.clone())
    }

    /// Number of objects (pending ones included).
    pub fn len(&self) -> usize {
        self.objects.len()
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.objects.is_empty()
    }

    /// Bytes of content held.
    pub fn content_bytes(&self) -> usize {
        self.bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn objects_live_while_held() {
        let mut store = ObjectStore::default();
        let id = ObjectId::of(b"x");
        assert!(store.hold(id, Some(Bytes::from_static(b"x"))));
        assert!(store.hold(id, None));
        assert_eq!(store.content_bytes(), 1);
        store.release(&id);
        assert_eq!(store.get(&id), Lookup::Found(Bytes::from_static(b"x")));
        store.release(&id);
        assert_eq!(store.get(&id), Lookup::NotFound);
        assert_eq!(store.content_bytes(), 0);
        // Releasing an unknown id is harmless.
        store.release(&id);
        assert!(store.is_empty());
    }

    #[test]
    fn pending_until_filled() {
        let mut store = ObjectStore::default();
        let id = ObjectId::of(b"y");
        assert!(!store.hold(id, None));
        assert_eq!(store.get(&id), Lookup::Pending);
        assert!(store.fill(&id, Bytes::from_static(b"y")));
        assert_eq!(store.content(&id), Some(Bytes::from_static(b"y")));
        assert!(!store.fill(&ObjectId::of(b"z"), Bytes::new()));
        assert_eq!(store.len(), 1);
    }
}
