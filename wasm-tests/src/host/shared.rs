//! Shared data and shared queues: the state Envoy keeps process-wide, so every worker's VM
//! sees the same keys and queues.

use std::collections::{BTreeMap, VecDeque};

use crate::types::Status;

/// Key-value store with a compare-and-swap token per key.
///
/// Follows proxy-wasm-cpp-host: the token comes from one counter for the whole process
/// (starting at 1, skipping 0 on wrap), every successful set takes a new one, a non-zero
/// `cas` must equal the key's current token, and a set of a missing key succeeds whatever
/// `cas` says. Envoy scopes keys by VM id; all VMs of a `Host` share one id, so one map.
#[derive(Debug, Default)]
pub(crate) struct SharedData {
    entries: BTreeMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl SharedData {
    pub(crate) fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    pub(crate) fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let token = self.next_cas();
        self.entries.insert(key.to_vec(), (value.to_vec(), token));
        Status::Ok
    }

    fn next_cas(&mut self) -> u32 {
        if self.next_cas == 0 {
            self.next_cas = 1;
        }
        let token = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1);
        token
    }
}

/// The root context that is told when a queue gets an item: the last one to register it,
/// as in Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueOwner {
    pub(crate) vm: usize,
    pub(crate) context: u32,
}

/// A `proxy_on_queue_ready` that Envoy would post to the owner's worker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct QueueReady {
    pub(crate) owner: QueueOwner,
    pub(crate) token: u32,
}

#[derive(Debug)]
struct Queue {
    items: VecDeque<Vec<u8>>,
    owner: Option<QueueOwner>,
}

/// FIFO queues addressed by `(vm_id, name)` at registration and by token afterwards.
#[derive(Debug, Default)]
pub(crate) struct Queues {
    tokens: BTreeMap<(String, String), u32>,
    queues: BTreeMap<u32, Queue>,
    last_token: u32,
    ready: Vec<QueueReady>,
}

impl Queues {
    /// Registers (or re-registers) a queue; the same name always yields the same token.
    pub(crate) fn register(&mut self, vm_id: &str, name: &str, owner: Option<QueueOwner>) -> u32 {
        let key = (vm_id.to_owned(), name.to_owned());
        let token = match self.tokens.get(&key) {
            Some(token) => *token,
            None => {
                self.last_token = self.last_token.wrapping_add(1).max(1);
                self.tokens.insert(key, self.last_token);
                self.last_token
            }
        };
        let queue = self.queues.entry(token).or_insert_with(|| Queue {
            items: VecDeque::new(),
            owner: None,
        });
        if owner.is_some() {
            queue.owner = owner;
        }
        token
    }

    pub(crate) fn resolve(&self, vm_id: &str, name: &str) -> Option<u32> {
        self.tokens
            .get(&(vm_id.to_owned(), name.to_owned()))
            .copied()
    }

    pub(crate) fn enqueue(&mut self, token: u32, value: &[u8]) -> Status {
        let Some(queue) = self.queues.get_mut(&token) else {
            return Status::NotFound;
        };
        queue.items.push_back(value.to_vec());
        if let Some(owner) = queue.owner {
            self.ready.push(QueueReady { owner, token });
        }
        Status::Ok
    }

    pub(crate) fn dequeue(&mut self, token: u32) -> Result<Vec<u8>, Status> {
        let queue = self.queues.get_mut(&token).ok_or(Status::NotFound)?;
        queue.items.pop_front().ok_or(Status::Empty)
    }

    pub(crate) fn items(&self, token: u32) -> Vec<Vec<u8>> {
        self.queues
            .get(&token)
            .map(|queue| queue.items.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Removes and returns the notifications meant for one VM, oldest first.
    pub(crate) fn take_ready(&mut self, vm: usize) -> Vec<QueueReady> {
        let (mine, others) = std::mem::take(&mut self.ready)
            .into_iter()
            .partition(|ready| ready.owner.vm == vm);
        self.ready = others;
        mine
    }

    pub(crate) fn ready_count(&self, vm: usize) -> usize {
        self.ready
            .iter()
            .filter(|ready| ready.owner.vm == vm)
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cas_rules_follow_envoy() {
        let mut data = SharedData::default();
        assert_eq!(data.get(b"k"), None);

        // A missing key is created whatever the cas says.
        assert_eq!(data.set(b"k", b"1", 77), Status::Ok);
        let (_, first) = data.get(b"k").unwrap();
        assert_ne!(first, 0);

        assert_eq!(data.set(b"k", b"2", first + 1), Status::CasMismatch);
        assert_eq!(data.set(b"k", b"2", first), Status::Ok);
        let (value, second) = data.get(b"k").unwrap();
        assert_eq!(value, b"2");
        assert_ne!(second, first);

        // A stale token fails; cas 0 always wins.
        assert_eq!(data.set(b"k", b"3", first), Status::CasMismatch);
        assert_eq!(data.set(b"k", b"4", 0), Status::Ok);
    }

    #[test]
    fn queues_are_fifo_and_notify_the_last_registrar() {
        let mut queues = Queues::default();
        let a = QueueOwner { vm: 0, context: 1 };
        let b = QueueOwner { vm: 1, context: 1 };
        let token = queues.register("", "q", Some(a));
        assert_eq!(queues.register("", "q", Some(b)), token);
        assert_eq!(queues.resolve("", "q"), Some(token));
        assert_eq!(queues.resolve("other-vm", "q"), None);

        assert_eq!(queues.dequeue(token), Err(Status::Empty));
        assert_eq!(queues.dequeue(token + 1), Err(Status::NotFound));
        assert_eq!(queues.enqueue(token + 1, b"x"), Status::NotFound);

        assert_eq!(queues.enqueue(token, b"1"), Status::Ok);
        assert_eq!(queues.enqueue(token, b"2"), Status::Ok);
        assert!(queues.take_ready(0).is_empty());
        assert_eq!(queues.take_ready(1).len(), 2);
        assert_eq!(queues.dequeue(token).unwrap(), b"1");
        assert_eq!(queues.dequeue(token).unwrap(), b"2");
    }
}
