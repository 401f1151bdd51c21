//! Live inbox fan-out inside one process: a watch channel per connected user carrying the
//! latest inbox sequence number. Streams wake on a change and read the new items from the
//! database, so nothing is lost when a wake-up is coalesced; streams also poll, so an item
//! written by another process is picked up too.

use std::collections::HashMap;
use std::sync::Mutex;
use tokio::sync::watch;

#[derive(Default)]
pub struct InboxHub {
    users: Mutex<HashMap<String, watch::Sender<u64>>>,
}

impl InboxHub {
    /// A receiver that changes whenever something is added to `user_id`'s inbox.
    pub fn subscribe(&self, user_id: &str) -> watch::Receiver<u64> {
        let Ok(mut users) = self.users.lock() else {
            // A poisoned lock: hand out a receiver that never fires; streams still poll.
            return watch::channel(0).1;
        };
        users
            .entry(user_id.to_owned())
            .or_insert_with(|| watch::channel(0).0)
            .subscribe()
    }

    /// Wakes `user_id`'s streams.
    pub fn publish(&self, user_id: &str) {
        let Ok(mut users) = self.users.lock() else {
            return;
        };
        let drop_it = match users.get(user_id) {
            Some(tx) => {
                tx.send_modify(|n| *n = n.wrapping_add(1));
                tx.receiver_count() == 0
            }
            None => false,
        };
        if drop_it {
            users.remove(user_id);
        }
    }

    /// Users with live streams (a gauge).
    pub fn connected_users(&self) -> usize {
        self.users
            .lock()
            .map(|u| u.values().filter(|tx| tx.receiver_count() > 0).count())
            .unwrap_or(0)
    }
}
