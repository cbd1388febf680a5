//! The fold-order buffer: in which order fit results reach the strategy.
//!
//! Results arrive in any order; by default they are handed to the strategy
//! in client-join (id) order so that the same inputs always give the same
//! bits. A result that arrives before its predecessors waits here.

use std::collections::BTreeMap;

use flower_strategy::ClientId;

/// Order in which fit results reach the strategy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AggregationOrder {
    /// Client-join (id) order: the same inputs give the same bits. A result
    /// that arrives before its predecessors waits in memory.
    #[default]
    JoinOrder,
    /// Arrival order: each result is folded and dropped as soon as it
    /// arrives (memory O(model)); float sums then depend on timing, as in
    /// Python Flower.
    Arrival,
}

/// Releases arrivals in the configured order. `T` is whatever a client's
/// exchange produced (a result, or the reason it failed).
#[derive(Debug)]
pub(crate) struct FoldBuffer<T> {
    order: Vec<ClientId>,
    policy: AggregationOrder,
    ready: BTreeMap<ClientId, T>,
    next: usize,
}

impl<T> FoldBuffer<T> {
    /// A buffer for the clients of `order` (sorted into join order).
    pub(crate) fn new(mut order: Vec<ClientId>, policy: AggregationOrder) -> Self {
        order.sort_unstable();
        FoldBuffer {
            order,
            policy,
            ready: BTreeMap::new(),
            next: 0,
        }
    }

    /// The clients in fold order.
    pub(crate) fn order(&self) -> &[ClientId] {
        &self.order
    }

    /// Takes one arrival and returns what is due now, in fold order.
    pub(crate) fn arrive(&mut self, client: ClientId, item: T) -> Vec<(ClientId, T)> {
        if self.policy == AggregationOrder::Arrival {
            return vec![(client, item)];
        }
        self.ready.insert(client, item);
        let mut due = Vec::new();
        while let Some(id) = self.order.get(self.next).copied() {
            let Some(item) = self.ready.remove(&id) else {
                break;
            };
            due.push((id, item));
            self.next += 1;
        }
        due
    }

    /// Number of arrivals held back waiting for a predecessor.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.ready.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u64) -> ClientId {
        ClientId::from(n)
    }

    fn ids(v: &[u64]) -> Vec<ClientId> {
        v.iter().map(|&i| id(i)).collect()
    }

    #[test]
    fn join_order_holds_early_arrivals_until_their_turn() {
        let mut buffer = FoldBuffer::new(ids(&[3, 1, 2]), AggregationOrder::JoinOrder);
        assert_eq!(buffer.order(), ids(&[1, 2, 3]).as_slice());
        assert!(buffer.arrive(id(3), "c").is_empty());
        assert!(buffer.arrive(id(2), "b").is_empty());
        assert_eq!(buffer.waiting(), 2);
        let due = buffer.arrive(id(1), "a");
        assert_eq!(due, vec![(id(1), "a"), (id(2), "b"), (id(3), "c")]);
        assert_eq!(buffer.waiting(), 0);
    }

    #[test]
    fn arrival_order_releases_at_once() {
        let mut buffer = FoldBuffer::new(ids(&[1, 2]), AggregationOrder::Arrival);
        assert_eq!(buffer.arrive(id(2), 'x'), vec![(id(2), 'x')]);
        assert_eq!(buffer.arrive(id(1), 'y'), vec![(id(1), 'y')]);
    }

    #[test]
    fn every_permutation_folds_in_join_order() {
        let perms: [[u64; 3]; 6] = [
            [1, 2, 3],
            [1, 3, 2],
            [2, 1, 3],
            [2, 3, 1],
            [3, 1, 2],
            [3, 2, 1],
        ];
        for perm in perms {
            let mut buffer = FoldBuffer::new(ids(&[1, 2, 3]), AggregationOrder::JoinOrder);
            let folded: Vec<ClientId> = perm
                .iter()
                .flat_map(|&i| buffer.arrive(id(i), ()))
                .map(|(id, ())| id)
                .collect();
            assert_eq!(folded, ids(&[1, 2, 3]), "arrivals {perm:?}");
        }
    }
}
