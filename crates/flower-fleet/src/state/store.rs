//! The content-addressed object store: reference-counted, so an object lives
//! exactly as long as some exchange in flight needs it.
//!
//! Every holder (an instruction waiting to be pulled, a reply being pushed)
//! takes one reference per distinct object id it names and gives it back
//! when it is done. The broadcast model is one set of ids shared by every
//! node's instruction, so it is stored once however many nodes pull it, and
//! dropped when the last of them confirmed or ended: memory stays
//! O(model × objects in flight).
//!
//! Pushed objects (replies) count against an optional memory limit
//! ([`SpillConfig`]): past it their contents go to unlinked temporary files,
//! so replies that arrive together, or wait for their turn in the fold,
//! hold disk rather than memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write as _;
use std::os::unix::fs::FileExt as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use flower_message::ObjectId;
use tracing::{error, warn};

/// An object's content, kept in at most two parts: a broadcast's chunk
/// object is its small head followed by a slice of the model's own `.npy`
/// bytes, so serving the model to any number of nodes never copies it.
pub type Content = flower_message::ObjectParts;

/// When pushed contents leave memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpillConfig {
    /// Pushed contents kept in memory, in bytes; past this they spill.
    pub memory_limit: usize,
    /// Directory of the (unlinked, never named) spill files.
    pub dir: PathBuf,
}

impl SpillConfig {
    /// The default limit: 64 MiB of pushed contents in memory (what is past
    /// it costs a write and a read of page cache: spilling only when many
    /// replies arrive at once keeps that cost off ordinary rounds).
    pub const DEFAULT_MEMORY_LIMIT: usize = 64 << 20;
}

impl Default for SpillConfig {
    /// [`SpillConfig::DEFAULT_MEMORY_LIMIT`] in the system's temporary
    /// directory.
    fn default() -> Self {
        SpillConfig {
            memory_limit: Self::DEFAULT_MEMORY_LIMIT,
            dir: std::env::temp_dir(),
        }
    }
}

/// A pushed object's content in an unlinked temporary file: the disk space
/// goes back when the last holder drops it.
#[derive(Debug)]
pub struct SpilledContent {
    file: File,
    len: usize,
}

impl SpilledContent {
    fn write(dir: &std::path::Path, content: &Content) -> std::io::Result<Self> {
        let mut file = tempfile::tempfile_in(dir)?;
        for part in content.parts() {
            file.write_all(part)?;
        }
        Ok(SpilledContent {
            file,
            len: content.len(),
        })
    }

    /// Reads the content back.
    pub fn read(&self) -> std::io::Result<Bytes> {
        let mut buf = vec![0; self.len];
        self.file.read_exact_at(&mut buf, 0)?;
        Ok(Bytes::from(buf))
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when there are no bytes.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// A pushed content in memory, counted in its store's live pushed bytes
/// for as long as it exists (in the store, or in a reply waiting to be
/// inflated), so the spill limit bounds both.
#[derive(Debug)]
pub struct PushedContent {
    bytes: Bytes,
    live: Arc<AtomicUsize>,
}

impl Drop for PushedContent {
    fn drop(&mut self) {
        self.live.fetch_sub(self.bytes.len(), Ordering::Relaxed);
    }
}

/// Where a stored object's content is.
#[derive(Debug, Clone)]
pub enum Stored {
    /// The server's own content (a broadcast), in memory.
    Memory(Content),
    /// Pushed content, in memory.
    Pushed(Arc<PushedContent>),
    /// Pushed content, in a spill file.
    Spilled(Arc<SpilledContent>),
}

impl Stored {
    /// The content as one buffer (a spilled one is read back).
    pub fn read(&self) -> std::io::Result<Bytes> {
        match self {
            Stored::Memory(c) => Ok(c.to_bytes()),
            Stored::Pushed(p) => Ok(p.bytes.clone()),
            Stored::Spilled(s) => s.read(),
        }
    }
}

impl flower_message::HandedOver for Stored {
    fn into_content(self) -> Option<Bytes> {
        self.read()
            .map_err(|e| error!(error = %e, "reading a spilled object failed"))
            .ok()
    }
}

#[derive(Debug)]
struct Entry {
    /// `None` while preregistered and not yet pushed.
    content: Option<Stored>,
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
    /// Bytes of content in memory.
    bytes: usize,
    /// Bytes of content in spill files.
    spilled: usize,
    spill: Option<SpillConfig>,
    /// Pushed bytes in memory, here or in replies not yet inflated.
    pushed_live: Arc<AtomicUsize>,
}

impl ObjectStore {
    /// A store whose pushed contents spill to disk past `spill`'s limit.
    pub fn with_spill(spill: Option<SpillConfig>) -> Self {
        ObjectStore {
            spill,
            ..ObjectStore::default()
        }
    }

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
                entry.content = Some(Stored::Memory(c));
            }
        }
        entry.content.is_some()
    }

    /// Gives back one reference; the object goes with the last one.
    pub fn release(&mut self, id: &ObjectId) {
        if let Some(entry) = self.objects.get_mut(id) {
            entry.refs = entry.refs.saturating_sub(1);
            if entry.refs == 0 {
                match &entry.content {
                    Some(Stored::Memory(c)) => self.bytes -= c.len(),
                    Some(Stored::Pushed(p)) => self.bytes -= p.bytes.len(),
                    Some(Stored::Spilled(s)) => self.spilled -= s.len(),
                    None => {}
                }
                self.objects.remove(id);
            }
        }
    }

    /// Stores the pushed content of a held object (checked by the caller),
    /// in a spill file when memory is past the limit. Returns `false` when
    /// nobody holds `id`.
    pub fn fill(&mut self, id: &ObjectId, content: Content) -> bool {
        let Some(entry) = self.objects.get(id) else {
            return false;
        };
        if entry.content.is_some() {
            return true;
        }
        let live = self.pushed_live.load(Ordering::Relaxed);
        let stored = match &self.spill {
            Some(spill) if live + content.len() > spill.memory_limit => {
                match SpilledContent::write(&spill.dir, &content) {
                    Ok(s) => Some(Stored::Spilled(Arc::new(s))),
                    Err(e) => {
                        // Nothing is lost: the content stays in memory.
                        warn!(dir = %spill.dir.display(), error = %e, "spilling a pushed object failed; kept in memory");
                        None
                    }
                }
            }
            _ => None,
        };
        let stored = stored.unwrap_or_else(|| {
            let bytes = content.to_bytes();
            self.pushed_live.fetch_add(bytes.len(), Ordering::Relaxed);
            Stored::Pushed(Arc::new(PushedContent {
                bytes,
                live: self.pushed_live.clone(),
            }))
        });
        match &stored {
            Stored::Spilled(s) => self.spilled += s.len(),
            Stored::Memory(c) => self.bytes += c.len(),
            Stored::Pushed(p) => self.bytes += p.bytes.len(),
        }
        if let Some(entry) = self.objects.get_mut(id) {
            entry.content = Some(stored);
        }
        true
    }

    /// The object's state (a spilled content is read back).
    pub fn get(&self, id: &ObjectId) -> Lookup {
        match self.objects.get(id) {
            None => Lookup::NotFound,
            Some(Entry { content: None, .. }) => Lookup::Pending,
            Some(Entry {
                content: Some(Stored::Memory(c)),
                ..
            }) => Lookup::Found(c.clone()),
            Some(Entry {
                content: Some(Stored::Pushed(p)),
                ..
            }) => Lookup::Found(p.bytes.clone().into()),
            Some(Entry {
                content: Some(Stored::Spilled(s)),
                ..
            }) => match s.read() {
                Ok(b) => Lookup::Found(b.into()),
                Err(e) => {
                    error!(object_id = %id, error = %e, "reading a spilled object failed");
                    Lookup::NotFound
                }
            },
        }
    }

    /// Where the content is, if present.
    pub fn stored(&self, id: &ObjectId) -> Option<Stored> {
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

    /// Bytes of content held in memory.
    pub fn content_bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of content held in spill files.
    pub fn spilled_bytes(&self) -> usize {
        self.spilled
    }

    /// Pushed bytes in memory, in the store or in replies not yet inflated.
    pub fn pushed_live_bytes(&self) -> usize {
        self.pushed_live.load(Ordering::Relaxed)
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
        assert_eq!(
            store.stored(&id).and_then(|s| s.read().ok()),
            Some(Bytes::from_static(b"y"))
        );
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

    #[test]
    fn pushed_contents_past_the_limit_spill_and_read_back() {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut store = ObjectStore::with_spill(Some(SpillConfig {
            memory_limit: 10,
            dir: dir.path().to_path_buf(),
        }));
        let small = Bytes::from_static(b"12345678");
        let big = Bytes::from(vec![7u8; 100]);
        let (a, b) = (ObjectId::of(&small), ObjectId::of(&big));
        assert!(!store.hold(a, None));
        assert!(!store.hold(b, None));
        assert!(store.fill(&a, small.clone().into()));
        assert!(store.fill(&b, big.clone().into()));
        assert_eq!((store.content_bytes(), store.spilled_bytes()), (8, 100));
        assert!(matches!(store.stored(&b), Some(Stored::Spilled(_))));
        assert_eq!(store.get(&b), Lookup::Found(big.clone().into()));
        assert_eq!(store.stored(&a).and_then(|s| s.read().ok()), Some(small));
        // Broadcast contents (held with their content) never spill.
        let model = Bytes::from(vec![1u8; 50]);
        store.hold(ObjectId::of(&model), Some(model.into()));
        assert_eq!(store.content_bytes(), 58);
        assert_eq!(store.pushed_live_bytes(), 8);
        // A pushed content handed out (a reply waiting to be inflated)
        // still counts until it is gone.
        let handed_out = store.stored(&a);
        store.release(&a);
        assert_eq!(store.pushed_live_bytes(), 8);
        drop(handed_out);
        assert_eq!(store.pushed_live_bytes(), 0);
        store.release(&b);
        assert_eq!(store.spilled_bytes(), 0);
        // The spill files are unlinked: the directory stays empty.
        assert_eq!(
            std::fs::read_dir(dir.path()).map(|d| d.count()).ok(),
            Some(0)
        );
    }

    #[test]
    fn an_unusable_spill_dir_keeps_contents_in_memory() {
        let mut store = ObjectStore::with_spill(Some(SpillConfig {
            memory_limit: 0,
            dir: PathBuf::from("/nonexistent/flower-spill"),
        }));
        let content = Bytes::from_static(b"abc");
        let id = ObjectId::of(&content);
        store.hold(id, None);
        assert!(store.fill(&id, content.clone().into()));
        assert_eq!(store.get(&id), Lookup::Found(content.into()));
        assert_eq!((store.content_bytes(), store.spilled_bytes()), (3, 0));
    }
}
