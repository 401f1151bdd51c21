//! The event contract: one payload type per event type, written by its producer with
//! `NewEvent::of(&payload)` and read by every consumer with `event.decode::<Payload>()`
//! (both from `mercato_kernel::outbox`). A field renamed on one side no longer compiles on the
//! other; docs/api.md lists the types and their fields.
//!
//! Each system has its own module; a new event type is a struct here with an
//! `EventPayload` impl (`TYPE`, `AGGREGATE`, `aggregate_id`), an entry in the `registry!` below
//! (which gives [`TYPES`] and [`decode_any`]), a sample in the tests and a row in docs/api.md
//! (a test checks both).
//!
//! Compatibility: consumers ignore fields they do not know; a field added to an existing type
//! must be `#[serde(default)]` (an `Option`), so that events written before it still decode.
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
/// "order", order.order_id);` where the last argument names the field holding the aggregate id.
#[macro_export]
macro_rules! payload {
    ($ty:ty, $event:literal, $aggregate:literal, $($id:ident).+) => {
        impl ::mercato_kernel::outbox::EventPayload for $ty {
            const TYPE: &'static str = $event;
            const AGGREGATE: &'static str = $aggregate;
            fn aggregate_id(&self) -> &str {
                &self.$($id).+
            }
        }
    };
}

use mercato_kernel::outbox::EventPayload;
use serde_json::Value;

/// An event's data that does not decode with the payload type of its event type.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("no payload type is registered for event type {0}")]
    UnknownType(String),
    #[error("{event_type} payload: {source}")]
    Payload {
        event_type: &'static str,
        source: serde_json::Error,
    },
}

macro_rules! registry {
    ($($variant:ident => $ty:ty),* $(,)?) => {
        /// Any event's payload, decoded with the type registered for its event type.
        #[derive(Clone, Debug, PartialEq)]
        pub enum AnyEvent {
            $($variant($ty),)*
        }

        /// Every event type a module emits, in the order of the registry.
        pub const TYPES: &[&str] = &[$(<$ty as EventPayload>::TYPE,)*];

        /// Decodes `data` with the payload type registered for `event_type`.
        pub fn decode_any(event_type: &str, data: &Value) -> Result<AnyEvent, DecodeError> {
            $(
                if event_type == <$ty as EventPayload>::TYPE {
                    return serde_json::from_value::<$ty>(data.clone())
                        .map(AnyEvent::$variant)
                        .map_err(|source| DecodeError::Payload {
                            event_type: <$ty as EventPayload>::TYPE,
                            source,
                        });
                }
            )*
            Err(DecodeError::UnknownType(event_type.to_owned()))
        }

        impl AnyEvent {
            /// The event type of this payload.
            pub fn event_type(&self) -> &'static str {
                match self {
                    $(AnyEvent::$variant(_) => <$ty as EventPayload>::TYPE,)*
                }
            }

            /// The payload as it goes on the wire (the event's `data`).
            pub fn to_value(&self) -> Value {
                let v = match self {
                    $(AnyEvent::$variant(p) => serde_json::to_value(p),)*
                };
                v.unwrap_or(Value::Null)
            }
        }
    };
}

registry! {
    ProductCreated => catalog::ProductCreated,
    ProductUpdated => catalog::ProductUpdated,
    UserRegistered => identity::UserRegistered,
    EmailVerificationRequested => identity::EmailVerificationRequested,
    EmailVerified => identity::EmailVerified,
    InventoryReserved => inventory::Reserved,
    InventoryReleased => inventory::Released,
    InventoryCommitted => inventory::Committed,
    InventoryAdjusted => inventory::Adjusted,
    LowStock => inventory::LowStock,
    CheckoutStarted => checkout::CheckoutStarted,
    CheckoutExpired => checkout::CheckoutExpired,
    FraudFlagged => fraud::FraudFlagged,
    FraudBlocked => fraud::FraudBlocked,
    FraudReviewApproved => fraud::FraudReviewApproved,
    FraudReviewRejected => fraud::FraudReviewRejected,
    PaymentCaptured => payments::PaymentCaptured,
    PaymentDeclined => payments::PaymentDeclined,
    PaymentPendingVerification => payments::PaymentPendingVerification,
    PaymentRefunded => payments::PaymentRefunded,
    PaymentChargeback => payments::PaymentChargeback,
    OrderCreated => orders::OrderCreated,
    OrderConfirmed => orders::OrderConfirmed,
    OrderFailed => orders::OrderFailed,
    OrderCancelled => orders::OrderCancelled,
    OrderFulfilmentStarted => orders::OrderFulfilmentStarted,
    OrderShipped => orders::OrderShipped,
    OrderDelivered => orders::OrderDelivered,
    OrderReturned => orders::OrderReturned,
    OrderRefunded => orders::OrderRefunded,
    ReturnRequested => orders::ReturnRequested,
    WebhookEndpointDisabled => webhooks::EndpointDisabled,
    LinkCreated => links::LinkCreated,
    LinkUpdated => links::LinkUpdated,
    LinkDeleted => links::LinkDeleted,
    PromotionRedeemed => promotions::PromotionRedeemed,
    PromotionReleased => promotions::PromotionReleased,
    FlashSaleStarted => flash_sales::FlashSaleStarted,
    FlashSaleSoldOut => flash_sales::FlashSaleSoldOut,
    FlashSaleEnded => flash_sales::FlashSaleEnded,
    LiveStreamStarted => live::StreamStarted,
    LiveStreamEnded => live::StreamEnded,
}

#[cfg(test)]
mod tests;
