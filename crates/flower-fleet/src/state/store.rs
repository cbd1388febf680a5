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

use bytes::{Bytes, BytesMut};
use flower_message::ObjectId;

/// An object's content, kept in at most two parts: a broadcast's chunk
/// object is its small head followed by a slice of the model's own `.npy`
/// bytes, so serving the model to any number of nodes never copies it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Content {
    head: Bytes,
    tail: Bytes,
}

impl Content {
    /// Content in two parts, `head` then `tail`.
    pub fn chained(head: Bytes, tail: Bytes) -> Self {
        Content { head, tail }
    }

    /// The non-empty parts, in order.
    pub fn parts(&self) -> impl Iterator<Item = &Bytes> {
        [&self.head, &self.tail]
            .into_iter()
            .filter(|b| !b.is_empty())
    }

    /// Total length in bytes.
    pub fn len(&self) -> usize {
        self.head.len() + self.tail.len()
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// One contiguous buffer: free for one-part content, a copy otherwise.
    pub fn to_bytes(&self) -> Bytes {
        if self.tail.is_empty() {
            return self.head.clone();
        }
        if self.head.is_empty() {
            return self.tail.clone();
        }
        let mut buf = BytesMut::with_capacity(self.len());
        buf.extend_from_slice(&self.head);
        buf.extend_from_slice(&self.tail);
        buf.freeze()
    }
}

impl From<Bytes> for Content {
    fn from(head: Bytes) -> Self {
        Content {
            head,
            tail: Bytes::new(),
        }
    }
}

#[derive(Debug)]
struct Entry {
    /// `None` while preregistered and not yet pushed.
    content: Option<Content>,
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
    Found(Content),
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
    pub fn hold(&mut self, id: ObjectId, content: Option<Content>) -> bool {
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
    pub fn fill(&mut self, id: &ObjectId, content: Content) -> bool {
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
    pub fn content(&self, id: &ObjectId) -> Option<Content> {
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
        assert!(store.hold(id, Some(Bytes::from_static(b"x").into())));
        assert!(store.hold(id, None));
        assert_eq!(store.content_bytes(), 1);
        store.release(&id);
        assert_eq!(
            store.get(&id),
            Lookup::Found(Bytes::from_static(b"x").into())
        );
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
        assert!(store.fill(&id, Bytes::from_static(b"y").into()));
        assert_eq!(store.content(&id), Some(Bytes::from_static(b"y").into()));
        assert!(!store.fill(&ObjectId::of(b"z"), Content::default()));
        assert_eq!(store.len(), 1);
    }

    #[test]
    fn chained_content_reads_as_one() {
        let c = Content::chained(Bytes::from_static(b"head\0"), Bytes::from_static(b"tail"));
        assert_eq!((c.len(), c.is_empty()), (9, false));
        assert_eq!(c.to_bytes(), Bytes::from_static(b"head\0tail"));
        assert_eq!(c.parts().count(), 2);
        let one = Content::from(Bytes::from_static(b"x"));
        assert_eq!(one.parts().count(), 1);
        assert!(Content::default().is_empty());
        assert_eq!(Content::default().parts().count(), 0);
    }
}
