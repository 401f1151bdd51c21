//! The event contract: one payload type per event type, written by its producer with
//! `NewEvent::of(&payload)` and read by every consumer with `event.decode::<Payload>()`
//! (both from `mercato_kernel::outbox`). A field renamed on one side no longer compiles on the
//! other; docs/api.md lists the types and their fields.
//!
//! Each system has its own module; a new event type is a struct here with an
//! `EventPayload` impl (`TYPE`, `AGGREGATE`, `aggregate_id`).
#![forbid(unsafe_code)]

pub mod catalog;
pub mod checkout;
pub mod flash_sales;
pub mod fraud;
pub mod identity;
pub mod inventory;
pub mod links;
pub mod live;
pub mod media;
pub mod orders;
pub mod payments;
pub mod promotions;
pub mod webhooks;

/// Implements `EventPayload` for a payload struct: `payload!(OrderConfirmed, "order.confirmed",
/// "order", order_id);` where the last argument names the field holding the aggregate id.
#[macro_export]
macro_rules! payload {
    ($ty:ty, $event:literal, $aggregate:literal, $id:ident) => {
        impl ::mercato_kernel::outbox::EventPayload for $ty {
            const TYPE: &'static str = $event;
            const AGGREGATE: &'static str = $aggregate;
            fn aggregate_id(&self) -> &str {
                &self.$id
            }
        }
    };
}
