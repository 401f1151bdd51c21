//! Commerce events → notifications. One durable consumer (`notify-commerce`) on the event bus.
//!
//! | event | type | to |
//! |---|---|---|
//! | `order.confirmed` | `order_confirmed` | the customer (a guest order: its email) |
//! | `payment.declined` | `payment_failed` | the customer (a guest order: its email) |
//! | `order.shipped` | `order_shipped` | the customer (a guest order: its email) |
//! | `order.delivered` | `order_delivered` | the customer (a guest order: its email) |
//! | `order.refunded` | `refund_issued` | the customer (a guest order: its email) |
//! | `order.returned` | `return_approved` | the customer (a guest order: its email) |
//! | `inventory.low_stock` | `low_stock` | every admin |
//! | `user.registered` | `welcome` | the new user |
//! | `user.email_verification_requested` | `email_verification` | the email being verified |
//! | `webhook.endpoint_disabled` | `webhook_disabled` | every admin |
//!
//! Idempotent per event id: each notification's `request_id` is `event:<event id>` (plus the
//! admin id for fan-out), so a redelivered event answers with the notification it already made.
//! Payloads are decoded with their types from `mercato-events` (the producers' types): extra
//! fields are ignored; a payload that does not decode is an error (the bus retries, then
//! dead-letters it where an admin can see it).

use crate::service::{Notifier, NotifyError, SendRequest};
use mercato_events::identity::{EmailVerificationRequested, UserRegistered};
use mercato_events::inventory::LowStock;
use mercato_events::orders::{
    OrderConfirmed, OrderDelivered, OrderRefunded, OrderReturned, OrderShipped,
};
use mercato_events::payments::PaymentDeclined;
use mercato_events::webhooks::EndpointDisabled;
use mercato_kernel::outbox::{Event, EventHandler, EventPayload as _};
use serde_json::{Value, json};

pub const CONSUMER: &str = "notify-commerce";

pub const EVENT_TYPES: &[&str] = &[
    OrderConfirmed::TYPE,
    PaymentDeclined::TYPE,
    OrderShipped::TYPE,
    OrderDelivered::TYPE,
    OrderRefunded::TYPE,
    OrderReturned::TYPE,
    LowStock::TYPE,
    UserRegistered::TYPE,
    EmailVerificationRequested::TYPE,
    EndpointDisabled::TYPE,
];

pub struct CommerceNotifications {
    notifier: Notifier,
}

impl CommerceNotifications {
    pub fn new(notifier: Notifier) -> CommerceNotifications {
        CommerceNotifications { notifier }
    }
}

/// The notifications an event asks for (no IO).
pub fn requests_for(event: &Event, admins: &[String]) -> anyhow::Result<Vec<SendRequest>> {
    let to_customer = |customer_id: String, type_name: &str, data: Value| SendRequest {
        user_id: Some(customer_id),
        type_name: type_name.to_owned(),
        data,
        request_id: Some(format!("event:{}", event.id)),
        ..SendRequest::default()
    };
    // A guest order's notifications go to the email the guest gave, with a link that opens
    // the order with its guest token (there is no account to look the contact up in).
    let to_buyer =
        |o: &mercato_events::orders::OrderSummary, type_name: &str, mut data: Value| match &o.guest
        {
            Some(g) => {
                if let Some(map) = data.as_object_mut() {
                    map.insert(
                        "order_link".into(),
                        Value::from(format!("/api/v1/orders/{}?token={}", o.order_id, g.token)),
                    );
                }
                SendRequest {
                    recipient: Some(crate::service::Recipient {
                        email: Some(g.email.clone()),
                        phone: None,
                        push_tokens: None,
                    }),
                    type_name: type_name.to_owned(),
                    data,
                    request_id: Some(format!("event:{}", event.id)),
                    ..SendRequest::default()
                }
            }
            None => to_customer(o.customer_id.clone(), type_name, data),
        };
    let one = |r: SendRequest| Ok(vec![r]);
    match event.event_type.as_str() {
        OrderConfirmed::TYPE => {
            let OrderConfirmed { order: o, .. } = event.decode()?;
            one(to_buyer(
                &o,
                "order_confirmed",
                json!({"order_id": o.order_id, "order_number": o.order_number, "total": o.total,
                       "items": o.items}),
            ))
        }
        PaymentDeclined::TYPE => {
            let p: PaymentDeclined = event.decode()?;
            one(to_customer(
                p.customer_id,
                "payment_failed",
                json!({"payment_id": p.payment_id, "amount": p.amount, "decline_code": p.decline_code}),
            ))
        }
        OrderShipped::TYPE => {
            let e: OrderShipped = event.decode()?;
            one(to_buyer(
                &e.order,
                "order_shipped",
                json!({"order_id": e.order.order_id, "order_number": e.order.order_number,
                       "carrier": e.carrier, "tracking_number": e.tracking_number}),
            ))
        }
        OrderDelivered::TYPE => {
            let OrderDelivered { order: o, .. } = event.decode()?;
            one(to_buyer(
                &o,
                "order_delivered",
                json!({"order_id": o.order_id, "order_number": o.order_number}),
            ))
        }
        OrderRefunded::TYPE => {
            let e: OrderRefunded = event.decode()?;
            one(to_buyer(
                &e.order,
                "refund_issued",
                json!({"order_id": e.order.order_id, "order_number": e.order.order_number,
                       "amount": e.amount}),
            ))
        }
        OrderReturned::TYPE => {
            let e: OrderReturned = event.decode()?;
            one(to_buyer(
                &e.order,
                "return_approved",
                json!({"order_id": e.order.order_id, "order_number": e.order.order_number,
                       "return_id": e.return_id}),
            ))
        }
        LowStock::TYPE => {
            let l: LowStock = event.decode()?;
            let data = json!({"sku": l.sku, "warehouse_id": l.warehouse_id,
                              "available": l.available, "threshold": l.threshold});
            Ok(admins
                .iter()
                .map(|admin| SendRequest {
                    user_id: Some(admin.clone()),
                    type_name: "low_stock".into(),
                    data: data.clone(),
                    request_id: Some(format!("event:{}:{admin}", event.id)),
                    ..SendRequest::default()
                })
                .collect())
        }
        EmailVerificationRequested::TYPE => {
            let v: EmailVerificationRequested = event.decode()?;
            // To the email being verified (not whatever the account holds by the time this
            // is delivered).
            one(SendRequest {
                recipient: Some(crate::service::Recipient {
                    email: Some(v.email.clone()),
                    phone: None,
                    push_tokens: None,
                }),
                type_name: "email_verification".into(),
                data: json!({"token": v.token, "hours": 24,
                             "verify_link": format!("/api/v1/auth/verify-email?token={}", v.token)}),
                request_id: Some(format!("event:{}", event.id)),
                ..SendRequest::default()
            })
        }
        EndpointDisabled::TYPE => {
            let e: EndpointDisabled = event.decode()?;
            let data = json!({"endpoint_id": e.endpoint_id, "url": e.url,
                              "failing_since": e.failing_since, "reason": e.reason});
            Ok(admins
                .iter()
                .map(|admin| SendRequest {
                    user_id: Some(admin.clone()),
                    type_name: "webhook_disabled".into(),
                    data: data.clone(),
                    request_id: Some(format!("event:{}:{admin}", event.id)),
                    ..SendRequest::default()
                })
                .collect())
        }
        UserRegistered::TYPE => {
            let u: UserRegistered = event.decode()?;
            let name = u
                .name
                .filter(|n| !n.trim().is_empty())
                .or_else(|| u.email.split('@').next().map(str::to_owned))
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "there".to_owned());
            one(SendRequest {
                user_id: Some(u.user_id.clone()),
                type_name: "welcome".into(),
                data: json!({"name": name, "user_id": u.user_id}),
                request_id: Some(format!("event:{}", event.id)),
                ..SendRequest::default()
            })
        }
        _ => Ok(Vec::new()),
    }
}

#[async_trait::async_trait]
impl EventHandler for CommerceNotifications {
    fn name(&self) -> &str {
        CONSUMER
    }

    fn interested_in(&self, event_type: &str) -> bool {
        EVENT_TYPES.contains(&event_type)
    }

    async fn handle(&self, event: &Event) -> anyhow::Result<()> {
        let admins =
            if event.event_type == LowStock::TYPE || event.event_type == EndpointDisabled::TYPE {
                self.notifier.inner.directory.admins().await?
            } else {
                Vec::new()
            };
        let producer = format!("event:{}", event.event_type);
        for req in requests_for(event, &admins)? {
            match self.notifier.accept(&producer, req, None).await {
                Ok(_) => {}
                // The user is gone or the payload cannot make a message: retrying will not
                // help, but the failure is kept (dead letter) for someone to look at.
                Err(NotifyError::Invalid(e)) => {
                    anyhow::bail!(
                        "{} {}: {}",
                        event.event_type,
                        event.id,
                        e.detail.unwrap_or_else(|| e.code.as_str().to_owned())
                    )
                }
                Err(NotifyError::NotFound) => anyhow::bail!("not found"),
                Err(NotifyError::Unexpected(e)) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mercato_kernel::Timestamp;

    fn event(t: &str, data: Value) -> Event {
        Event {
            id: "evt_1".into(),
            event_type: t.into(),
            occurred_at: Timestamp::from_micros(0),
            aggregate_type: "order".into(),
            aggregate_id: "ord_1".into(),
            correlation_id: None,
            causation_id: None,
            version: 1,
            data,
        }
    }

    #[test]
    fn an_order_confirmation_goes_to_the_customer_keyed_by_event() {
        let e = event(
            "order.confirmed",
            json!({"order_id": "ord_1", "order_number": "M-1", "customer_id": "usr_1",
                   "checkout_id": "chk_1", "status": "confirmed",
                   "total": {"amount": 100, "currency": "USD"}, "items": [], "extra": true}),
        );
        let r = requests_for(&e, &[]).expect("requests");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].user_id.as_deref(), Some("usr_1"));
        assert_eq!(r[0].type_name, "order_confirmed");
        assert_eq!(r[0].request_id.as_deref(), Some("event:evt_1"));
        assert!(r[0].data.get("extra").is_none());
    }

    #[test]
    fn low_stock_fans_out_to_admins() {
        let e = event(
            "inventory.low_stock",
            json!({"sku": "A", "warehouse_id": "wh_1", "available": 2, "threshold": 10}),
        );
        let r = requests_for(&e, &["usr_a".into(), "usr_b".into()]).expect("requests");
        assert_eq!(r.len(), 2);
        assert_ne!(r[0].request_id, r[1].request_id);
    }

    #[test]
    fn a_payload_missing_fields_is_an_error() {
        let e = event("order.shipped", json!({"order_id": "ord_1"}));
        assert!(requests_for(&e, &[]).is_err());
        let e = event(
            "order.delivered",
            json!({"order_id": "ord_1", "order_number": "M"}),
        );
        assert!(requests_for(&e, &[]).is_err(), "no customer_id");
        // The drift this decoding catches: a low-stock event without its warehouse.
        let e = event(
            "inventory.low_stock",
            json!({"sku": "A", "available": 2, "threshold": 10}),
        );
        assert!(requests_for(&e, &["usr_a".into()]).is_err());
    }

    #[test]
    fn welcome_uses_the_name_or_the_email() {
        let e = event(
            "user.registered",
            json!({"user_id": "usr_1", "email": "ada@example.com", "name": null, "role": "customer"}),
        );
        let r = requests_for(&e, &[]).expect("requests");
        assert_eq!(r[0].data["name"], "ada");
    }
}
