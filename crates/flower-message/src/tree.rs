//! [`ObjectTree`]: the ids of a message's objects, shaped as the objects
//! nest (`flwr.proto.ObjectTree`).
//!
//! Each node lists its unique children in head order; an object shared by
//! several parents (e.g. identical chunks of two arrays) appears once under
//! each of them.

use flower_proto as pb;

use crate::{parse_head, Error, Limits, ObjectClass, ObjectId, ObjectSource};

/// Deepest possible tree: Message → RecordDict → ArrayRecord → Array →
/// ArrayChunk.
pub const MAX_TREE_DEPTH: usize = 5;

/// A node of an object tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectTree {
    /// The object.
    pub id: ObjectId,
    /// Its children, in head order.
    pub children: Vec<ObjectTree>,
}

impl ObjectTree {
    /// A leaf.
    pub fn leaf(id: ObjectId) -> Self {
        ObjectTree {
            id,
            children: Vec::new(),
        }
    }

    /// Converts and checks a tree received from a peer: every id valid, at
    /// most [`MAX_TREE_DEPTH`] levels and `limits.max_tree_nodes` nodes, no
    /// id among its own ancestors ([`Error::Cycle`]), no child listed twice
    /// under one parent.
    pub fn from_proto(tree: &pb::ObjectTree, limits: &Limits) -> Result<Self, Error> {
        let mut nodes = 0;
        let mut path = Vec::with_capacity(MAX_TREE_DEPTH);
        convert(tree, limits, &mut nodes, &mut path)
    }

    /// The protobuf form.
    pub fn to_proto(&self) -> pb::ObjectTree {
        pb::ObjectTree {
            object_id: self.id.to_string(),
            children: self.children.iter().map(ObjectTree::to_proto).collect(),
        }
    }

    /// The ids of the children, in order.
    pub fn child_ids(&self) -> impl Iterator<Item = &ObjectId> {
        self.children.iter().map(|c| &c.id)
    }

    /// Every node's id in post-order (children before parents, the order
    /// flwr pushes and preregisters objects in), repeats included.
    pub fn post_order(&self) -> Vec<ObjectId> {
        let mut out = Vec::new();
        fn walk(t: &ObjectTree, out: &mut Vec<ObjectId>) {
            for c in &t.children {
                walk(c, out);
            }
            out.push(t.id);
        }
        walk(self, &mut out);
        out
    }

    /// The distinct ids in post-order of first appearance.
    pub fn unique_ids(&self) -> Vec<ObjectId> {
        let mut seen = std::collections::HashSet::new();
        self.post_order()
            .into_iter()
            .filter(|id| seen.insert(*id))
            .collect()
    }

    /// Number of nodes (repeats included).
    pub fn node_count(&self) -> usize {
        1 + self
            .children
            .iter()
            .map(ObjectTree::node_count)
            .sum::<usize>()
    }

    /// Rebuilds the tree below `root` from stored objects, reading only
    /// their heads (each head is checked; hashes are not, see
    /// [`validate_object`](crate::validate_object)). Bounded like
    /// [`ObjectTree::from_proto`], and children must be of a class their
    /// parent can hold.
    pub fn from_objects(
        root: &ObjectId,
        objects: &impl ObjectSource,
        limits: &Limits,
    ) -> Result<Self, Error> {
        let mut nodes = 0;
        let mut path = Vec::with_capacity(MAX_TREE_DEPTH);
        build(root, None, objects, limits, &mut nodes, &mut path)
    }
}

/// Counts one more node against the limit.
fn count_node(nodes: &mut usize, limits: &Limits) -> Result<(), Error> {
    *nodes += 1;
    if *nodes > limits.max_tree_nodes {
        return Err(Error::LimitExceeded {
            what: "object tree nodes",
            limit: limits.max_tree_nodes as u64,
            actual: *nodes as u64,
        });
    }
    Ok(())
}

fn check_depth(path: &[ObjectId]) -> Result<(), Error> {
    if path.len() >= MAX_TREE_DEPTH {
        return Err(Error::LimitExceeded {
            what: "object tree depth",
            limit: MAX_TREE_DEPTH as u64,
            actual: path.len() as u64 + 1,
        });
    }
    Ok(())
}

fn convert(
    tree: &pb::ObjectTree,
    limits: &Limits,
    nodes: &mut usize,
    path: &mut Vec<ObjectId>,
) -> Result<ObjectTree, Error> {
    count_node(nodes, limits)?;
    let id: ObjectId = tree.object_id.parse()?;
    if path.contains(&id) {
        return Err(Error::Cycle { id });
    }
    check_depth(path)?;
    path.push(id);
    let mut children: Vec<ObjectTree> = Vec::with_capacity(tree.children.len());
    for child in &tree.children {
        let child = convert(child, limits, nodes, path)?;
        if children.iter().any(|c| c.id == child.id) {
            return Err(Error::DuplicateChild {
                parent: id,
                child: child.id,
            });
        }
        children.push(child);
    }
    path.pop();
    Ok(ObjectTree { id, children })
}

fn build(
    id: &ObjectId,
    parent: Option<(ObjectId, ObjectClass)>,
    objects: &impl ObjectSource,
    limits: &Limits,
    nodes: &mut usize,
    path: &mut Vec<ObjectId>,
) -> Result<ObjectTree, Error> {
    count_node(nodes, limits)?;
    if path.contains(id) {
        return Err(Error::Cycle { id: *id });
    }
    check_depth(path)?;
    let content = objects.object(id).ok_or(Error::MissingObject { id: *id })?;
    let head = parse_head(id, &content)?;
    check_child_class(id, head.class, parent)?;
    path.push(*id);
    let children = head
        .children
        .iter()
        .map(|c| build(c, Some((*id, head.class)), objects, limits, nodes, path))
        .collect::<Result<Vec<_>, _>>()?;
    path.pop();
    Ok(ObjectTree { id: *id, children })
}

/// Checks that an object of `class` may sit under `parent` (or, at the
/// root, that it is a `Message`).
pub(crate) fn check_child_class(
    id: &ObjectId,
    class: ObjectClass,
    parent: Option<(ObjectId, ObjectClass)>,
) -> Result<(), Error> {
    let (ok, expected) = match parent {
        None => (class == ObjectClass::Message, "a Message (the root)"),
        Some((_, p)) => (p.can_hold(class), p.child_description()),
    };
    if ok {
        Ok(())
    } else {
        Err(Error::WrongClass {
            id: *id,
            expected,
            found: class,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pb_tree(id: &ObjectId, children: Vec<pb::ObjectTree>) -> pb::ObjectTree {
        pb::ObjectTree {
            object_id: id.to_string(),
            children,
        }
    }

    #[test]
    fn proto_checks() {
        let (a, b, c) = (ObjectId::of(b"a"), ObjectId::of(b"b"), ObjectId::of(b"c"));
        let limits = Limits::default();
        let ok = pb_tree(
            &a,
            vec![pb_tree(&b, vec![pb_tree(&c, vec![])]), pb_tree(&c, vec![])],
        );
        let tree = ObjectTree::from_proto(&ok, &limits);
        let tree = tree.unwrap_or_else(|_| ObjectTree::leaf(a));
        assert_eq!(tree.to_proto(), ok);
        assert_eq!(tree.post_order(), [c, b, c, a]);
        assert_eq!(tree.unique_ids(), [c, b, a]);
        assert_eq!(tree.node_count(), 4);

        let cycle = pb_tree(&a, vec![pb_tree(&b, vec![pb_tree(&a, vec![])])]);
        assert!(matches!(
            ObjectTree::from_proto(&cycle, &limits),
            Err(Error::Cycle { id }) if id == a
        ));
        let dup = pb_tree(&a, vec![pb_tree(&b, vec![]), pb_tree(&b, vec![])]);
        assert!(matches!(
            ObjectTree::from_proto(&dup, &limits),
            Err(Error::DuplicateChild { .. })
        ));
        let bad = pb::ObjectTree {
            object_id: "zz".into(),
            children: vec![],
        };
        assert!(matches!(
            ObjectTree::from_proto(&bad, &limits),
            Err(Error::BadObjectId { .. })
        ));
        // Six distinct levels.
        let mut deep = pb_tree(&ObjectId::of(b"0"), vec![]);
        for i in 1..6u8 {
            deep = pb_tree(&ObjectId::of(&[i]), vec![deep]);
        }
        assert!(matches!(
            ObjectTree::from_proto(&deep, &limits),
            Err(Error::LimitExceeded {
                what: "object tree depth",
                ..
            })
        ));
        let small = Limits {
            max_tree_nodes: 3,
            ..Limits::default()
        };
        assert!(matches!(
            ObjectTree::from_proto(&ok, &small),
            Err(Error::LimitExceeded {
                what: "object tree nodes",
                ..
            })
        ));
    }
}
