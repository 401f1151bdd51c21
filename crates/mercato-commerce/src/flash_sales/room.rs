//! The waiting room behind a small trait: tickets, the shuffle of early joiners, admission
//! at the sale's rate, and the count of units left unclaimed (so "sold out" is answered from
//! memory). The embedded implementation keeps it in process memory; a Redis implementation
//! (shared by several nodes) comes with the scale-out work behind the same trait. The
//! database stays the arbiter of purchase tokens: the room only decides who may ask for one.

use super::model::{TicketId, admit, wait_secs};
use mercato_kernel::Timestamp;
use rand::seq::SliceRandom;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, RwLock};

/// What the room needs to know of a sale.
#[derive(Clone, Copy, Debug)]
pub struct RoomSale<'a> {
    pub id: &'a str,
    pub starts_at: Timestamp,
    pub admit_per_minute: i64,
}

/// A ticket's place in the room.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Place {
    pub ticket: String,
    pub customer: String,
    /// 1-based among the tickets not yet admitted (0 once admitted).
    pub position: i64,
    pub admitted: bool,
    pub estimated_wait_secs: i64,
}

/// The shared waiting room of every sale.
pub trait WaitingRoom: Send + Sync + 'static {
    /// Joins `customer` to the sale's queue; joining again returns the same ticket.
    fn join(&self, sale: RoomSale<'_>, customer: &str, now: Timestamp) -> Place;
    /// The ticket's place, `None` for an unknown ticket.
    fn place(&self, sale: RoomSale<'_>, ticket: &str, now: Timestamp) -> Option<Place>;
    /// (waiting, admitted).
    fn counts(&self, sale: RoomSale<'_>, now: Timestamp) -> (i64, i64);
    /// Units not yet claimed by a token, as last learnt (`None`: not known here yet).
    fn remaining(&self, sale_id: &str) -> Option<i64>;
    fn set_remaining(&self, sale_id: &str, remaining: i64);
    /// Drops an ended sale's room.
    fn close(&self, sale_id: &str);
}

#[derive(Default)]
struct Queue {
    /// Tickets in admission order.
    order: Vec<String>,
    /// ticket → (customer, index in `order`).
    tickets: HashMap<String, (String, usize)>,
    by_customer: HashMap<String, String>,
    shuffled: bool,
    /// Admitted so far (fractional) and when that was computed.
    credit: f64,
    credit_at: Option<Timestamp>,
}

impl Queue {
    /// Shuffles everyone who joined before the start, once, then brings admission up to `now`.
    fn advance(&mut self, sale: RoomSale<'_>, now: Timestamp) {
        if now < sale.starts_at {
            return;
        }
        if !self.shuffled {
            self.shuffled = true;
            self.order.shuffle(&mut rand::thread_rng());
            for (i, t) in self.order.iter().enumerate() {
                if let Some(e) = self.tickets.get_mut(t) {
                    e.1 = i;
                }
            }
        }
        let from = self.credit_at.unwrap_or(sale.starts_at).max(sale.starts_at);
        let elapsed = now.as_micros() - from.as_micros();
        if elapsed > 0 {
            self.credit = admit(
                self.credit,
                elapsed,
                sale.admit_per_minute,
                self.order.len(),
            );
            self.credit_at = Some(now);
        }
    }

    fn admitted(&self) -> usize {
        (self.credit.floor() as usize).min(self.order.len())
    }

    fn place_of(&self, sale: RoomSale<'_>, ticket: &str, now: Timestamp) -> Option<Place> {
        let (customer, index) = self.tickets.get(ticket)?;
        let admitted = self.shuffled && *index < self.admitted();
        let (position, wait) = if admitted {
            (0, 0)
        } else if !self.shuffled {
            // Provisional until the start's shuffle.
            let until_start = (sale.starts_at.as_micros() - now.as_micros()).max(0) / 1_000_000;
            (
                *index as i64 + 1,
                until_start + wait_secs(*index, 0, sale.admit_per_minute),
            )
        } else {
            (
                (index - self.admitted()) as i64 + 1,
                wait_secs(*index, self.admitted(), sale.admit_per_minute),
            )
        };
        Some(Place {
            ticket: ticket.to_owned(),
            customer: customer.clone(),
            position,
            admitted,
            estimated_wait_secs: wait,
        })
    }
}

struct Room {
    queue: Mutex<Queue>,
    remaining: AtomicI64,
}

/// The in-process waiting room (one node).
#[derive(Default)]
pub struct MemoryWaitingRoom {
    rooms: RwLock<HashMap<String, Arc<Room>>>,
}

impl MemoryWaitingRoom {
    fn room(&self, sale_id: &str) -> Arc<Room> {
        if let Ok(r) = self.rooms.read()
            && let Some(room) = r.get(sale_id)
        {
            return room.clone();
        }
        let mut w = match self.rooms.write() {
            Ok(w) => w,
            Err(p) => p.into_inner(),
        };
        w.entry(sale_id.to_owned())
            .or_insert_with(|| {
                Arc::new(Room {
                    queue: Mutex::new(Queue::default()),
                    remaining: AtomicI64::new(-1),
                })
            })
            .clone()
    }
}

fn lock(room: &Room) -> std::sync::MutexGuard<'_, Queue> {
    match room.queue.lock() {
        Ok(q) => q,
        Err(p) => p.into_inner(),
    }
}

impl WaitingRoom for MemoryWaitingRoom {
    fn join(&self, sale: RoomSale<'_>, customer: &str, now: Timestamp) -> Place {
        let room = self.room(sale.id);
        let mut q = lock(&room);
        q.advance(sale, now);
        let ticket = match q.by_customer.get(customer) {
            Some(t) => t.clone(),
            None => {
                let t = TicketId::new().into_string();
                let index = q.order.len();
                q.order.push(t.clone());
                q.tickets.insert(t.clone(), (customer.to_owned(), index));
                q.by_customer.insert(customer.to_owned(), t.clone());
                t
            }
        };
        q.place_of(sale, &ticket, now).unwrap_or(Place {
            ticket,
            customer: customer.to_owned(),
            position: 0,
            admitted: false,
            estimated_wait_secs: 0,
        })
    }

    fn place(&self, sale: RoomSale<'_>, ticket: &str, now: Timestamp) -> Option<Place> {
        let room = self.room(sale.id);
        let mut q = lock(&room);
        q.advance(sale, now);
        q.place_of(sale, ticket, now)
    }

    fn counts(&self, sale: RoomSale<'_>, now: Timestamp) -> (i64, i64) {
        let room = self.room(sale.id);
        let mut q = lock(&room);
        q.advance(sale, now);
        let admitted = if q.shuffled { q.admitted() } else { 0 };
        (
            (q.order.len() - admitted.min(q.order.len())) as i64,
            admitted as i64,
        )
    }

    fn remaining(&self, sale_id: &str) -> Option<i64> {
        let n = self.room(sale_id).remaining.load(Ordering::Acquire);
        (n >= 0).then_some(n)
    }

    fn set_remaining(&self, sale_id: &str, remaining: i64) {
        self.room(sale_id)
            .remaining
            .store(remaining.max(0), Ordering::Release);
    }

    fn close(&self, sale_id: &str) {
        if let Ok(mut w) = self.rooms.write() {
            w.remove(sale_id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_micros(s * 1_000_000)
    }

    fn sale(apm: i64) -> RoomSale<'static> {
        RoomSale {
            id: "fls_1",
            starts_at: ts(100),
            admit_per_minute: apm,
        }
    }

    #[test]
    fn joining_twice_returns_the_same_ticket() {
        let r = MemoryWaitingRoom::default();
        let a = r.join(sale(60), "usr_a", ts(10));
        let b = r.join(sale(60), "usr_a", ts(11));
        assert_eq!(a.ticket, b.ticket);
        assert_eq!(r.counts(sale(60), ts(11)), (1, 0));
    }

    #[test]
    fn nobody_is_admitted_before_the_start_and_then_at_the_rate() {
        let r = MemoryWaitingRoom::default();
        let tickets: Vec<Place> = (0..10)
            .map(|i| r.join(sale(60), &format!("usr_{i}"), ts(10)))
            .collect();
        assert!(tickets.iter().all(|t| !t.admitted));
        assert_eq!(tickets[3].position, 4);
        assert!(tickets[3].estimated_wait_secs >= 90);
        // 60 per minute: 3 admitted 3 s after the start.
        assert_eq!(r.counts(sale(60), ts(103)), (7, 3));
        let admitted = tickets
            .iter()
            .filter(|t| {
                r.place(sale(60), &t.ticket, ts(103))
                    .is_some_and(|p| p.admitted)
            })
            .count();
        assert_eq!(admitted, 3);
        assert_eq!(r.counts(sale(60), ts(200)), (0, 10));
    }

    #[test]
    fn late_arrivals_queue_in_order_after_the_early_ones() {
        let r = MemoryWaitingRoom::default();
        for i in 0..5 {
            r.join(sale(60), &format!("early_{i}"), ts(10));
        }
        let late1 = r.join(sale(60), "late_1", ts(100));
        let late2 = r.join(sale(60), "late_2", ts(100));
        assert_eq!(late1.position, 6);
        assert_eq!(late2.position, 7);
        assert!(late2.estimated_wait_secs > late1.estimated_wait_secs);
    }

    #[test]
    fn unknown_tickets_have_no_place() {
        let r = MemoryWaitingRoom::default();
        assert!(r.place(sale(60), "tkt_nope", ts(10)).is_none());
        assert_eq!(r.remaining("fls_1"), None);
        r.set_remaining("fls_1", 5);
        assert_eq!(r.remaining("fls_1"), Some(5));
    }
}
