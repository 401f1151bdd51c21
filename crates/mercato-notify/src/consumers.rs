//! Commerce events → notifications. One durable consumer (`notify-commerce`) on the event bus.
//!
//! | event | type | to |
//! |---|---|---|
//! | `order.confirmed` | `order_confirmed` | the customer |
//! | `payment.declined` | `payment_failed` | the customer |
//! | `order.shipped` | `order_shipped` | the customer |
//! | `order.delivered` | `order_delivered` | the customer |
//! | `order.refunded` | `refund_issued` | the customer |
//! | `order.returned` | `return_approved` | the customer |
//! | `inventory.low_stock` | `low_stock` | every admin |
//! | `user.registered` | `welcome` | the new user |
//!
//! Idempotent per event id: each notification's `request_id` is `event:<event id>` (plus the
//! admin id for fan-out), so a redelivered event answers with the notification it already made.
//! Extra payload fields are ignored; a payload missing what the message needs is an error (the
//! bus retries, then dead-letters it where an admin can see it).

use crate::service::{Notifier, NotifyError, SendRequest};
use mercato_kernel::outbox::{Event, EventHandler};
use serde_json::{Value, json};

pub const CONSUMER: &str = "notify-commerce";

pub const EVENT_TYPES: &[&str] = &[
    "order.confirmed",
    "payment.declined",
    "order.shipped",
    "order.delivered",
    "order.refunded",
    "order.returned",
    "inventory.low_stock",
    "user.registered",
];

pub struct CommerceNotifications {
    notifier: Notifier,
}

impl CommerceNotifications {
    pub fn new(notifier: Notifier) -> CommerceNotifications {
        CommerceNotifications { notifier }
    }
}

fn field<'a>(data: &'a Value, name: &str, event: &Event) -> anyhow::Result<&'a Value> {
    match data.get(name) {
        Some(v) if !v.is_null() => Ok(v),
        _ => anyhow::bail!("{} {} has no {name}", event.event_type, event.id),
    }
}

fn text(data: &Value, name: &str, event: &Event) -> anyhow::Result<String> {
    let v = field(data, name, event)?;
    Ok(match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    })
}

/// Picks the named fields of the payload (the template's variables).
fn pick(data: &Value, names: &[&str], event: &Event) -> anyhow::Result<Value> {
    let mut out = serde_json::Map::new();
    for n in names {
        out.insert((*n).to_owned(), field(data, n, event)?.clone());
    }
    Ok(Value::Object(out))
}

/// The notifications an event asks for (no IO).
pub fn requests_for(event: &Event, admins: &[String]) -> anyhow::Result<Vec<SendRequest>> {
    let d = &event.data;
    let to_customer = |type_name: &str, data: Value| -> anyhow::Result<Vec<SendRequest>> {
        Ok(vec![SendRequest {
            user_id: Some(text(d, "customer_id", event)?),
            type_name: type_name.to_owned(),
            data,
            request_id: Some(format!("event:{}", event.id)),
            ..SendRequest::default()
        }])
    };
    match event.event_type.as_str() {
        "order.confirmed" => {
            let mut data = pick(d, &["order_id", "order_number", "total"], event)?;
            data["items"] = d.get("items").cloned().unwrap_or_else(|| json!([]));
            to_customer("order_confirmed", data)
        }
        "payment.declined" => to_customer(
            "payment_failed",
            pick(d, &["payment_id", "amount", "decline_code"], event)?,
        ),
        "order.shipped" => to_customer(
            "order_shipped",
            pick(
                d,
                &["order_id", "order_number", "carrier", "tracking_number"],
                event,
            )?,
        ),
        "order.delivered" => to_customer(
            "order_delivered",
            pick(d, &["order_id", "order_number"], event)?,
        ),
        "order.refunded" => to_customer(
            "refund_issued",
            pick(d, &["order_id", "order_number", "amount"], event)?,
        ),
        "order.returned" => to_customer(
            "return_approved",
            pick(d, &["order_id", "order_number", "return_id"], event)?,
        ),
        "inventory.low_stock" => {
            let data = pick(d, &["sku", "warehouse_id", "available", "threshold"], event)?;
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
        "user.registered" => {
            let user_id = text(d, "user_id", event)?;
            let name = d
                .get("name")
                .and_then(Value::as_str)
                .filter(|n| !n.trim().is_empty())
                .map(str::to_owned)
                .or_else(|| {
                    d.get("email")
                        .and_then(Value::as_str)
                        .and_then(|e| e.split('@').next())
                        .map(str::to_owned)
                })
                .unwrap_or_else(|| "there".to_owned());
            Ok(vec![SendRequest {
                user_id: Some(user_id.clone()),
                type_name: "welcome".into(),
                data: json!({"name": name, "user_id": user_id}),
                request_id: Some(format!("event:{}", event.id)),
                ..SendRequest::default()
            }])
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
        let admins = if event.event_type == "inventory.low_stock" {
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
