//! Round trips of every registered payload, and the event list of docs/api.md.

use super::*;
use serde_json::json;

/// One payload per registered type, in the shape its producer writes it.
fn samples() -> Vec<(&'static str, Value)> {
    let usd = |amount: i64| json!({"amount": amount, "currency": "USD"});
    let summary = |status: &str| {
        json!({"order_id": "ord_1", "order_number": "M-1", "customer_id": "usr_1",
               "checkout_id": "chk_1", "status": status, "total": usd(2500),
               "items": [{"sku": "TEE", "name": "T-shirt", "quantity": 2, "product_id": "prd_1",
                          "seller_id": "usr_s", "unit_price": usd(1250)}]})
    };
    let with = |mut base: Value, extra: Value| {
        if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
            b.extend(e);
        }
        base
    };
    let lines = json!([{"sku": "TEE", "warehouse_id": "wh_1", "quantity": 2}]);
    vec![
        (
            "catalog.product_created",
            json!({"product_id": "prd_1", "seller_id": "usr_s", "version": 1, "reason": "created"}),
        ),
        (
            "catalog.product_updated",
            json!({"product_id": "prd_1", "seller_id": "usr_s", "version": 3, "reason": "review"}),
        ),
        (
            "user.registered",
            json!({"user_id": "usr_1", "email": "ada@example.com", "name": "Ada", "role": "customer"}),
        ),
        (
            "user.email_verification_requested",
            json!({"user_id": "usr_1", "email": "ada@example.com", "token": "evt_1",
                   "expires_at": 1_700_000_000_000_000_i64}),
        ),
        (
            "user.email_verified",
            json!({"user_id": "usr_1", "email": "ada@example.com"}),
        ),
        (
            "inventory.reserved",
            json!({"checkout_id": "chk_1", "lines": lines}),
        ),
        (
            "inventory.released",
            json!({"checkout_id": "chk_1", "lines": lines, "reason": "checkout expired"}),
        ),
        (
            "inventory.committed",
            json!({"checkout_id": "chk_1", "lines": lines, "reference": "ord_1"}),
        ),
        (
            "inventory.adjusted",
            json!({"sku": "TEE", "warehouse_id": "wh_1", "delta": -5, "on_hand": 10, "reserved": 2,
                   "available": 8, "reason": "damaged"}),
        ),
        (
            "inventory.low_stock",
            json!({"sku": "TEE", "warehouse_id": "wh_1", "available": 3, "threshold": 10}),
        ),
        (
            "checkout.started",
            json!({"checkout_id": "chk_1", "customer_id": "usr_1", "cart_id": "crt_1",
                   "total": usd(2500), "expires_at": "2026-12-02T07:15:00Z"}),
        ),
        (
            "checkout.expired",
            json!({"checkout_id": "chk_1", "customer_id": "usr_1"}),
        ),
        (
            "fraud.flagged",
            json!({"order_id": "ord_1", "checkout_id": "chk_1", "customer_id": "usr_1",
                   "decision": "review", "reason": "velocity"}),
        ),
        (
            "fraud.blocked",
            json!({"checkout_id": "chk_1", "customer_id": "usr_1", "decision_id": "frd_1",
                   "score": 0.12, "reasons": ["blocklist: email"]}),
        ),
        (
            "fraud.review_approved",
            json!({"review_id": "frv_1", "order_id": "ord_1", "customer_id": "usr_1",
                   "actor": "usr_a"}),
        ),
        (
            "fraud.review_rejected",
            json!({"review_id": "frv_1", "order_id": "ord_1", "customer_id": "usr_1",
                   "actor": "usr_a", "reason": "stolen card"}),
        ),
        (
            "payment.captured",
            json!({"payment_id": "pay_1", "checkout_id": "chk_1", "order_id": "ord_1",
                   "customer_id": "usr_1", "amount": usd(2500), "charge_id": "ch_1"}),
        ),
        (
            "payment.declined",
            json!({"payment_id": "pay_1", "checkout_id": "chk_1", "customer_id": "usr_1",
                   "amount": usd(2500), "decline_code": "card_declined"}),
        ),
        (
            "payment.pending_verification",
            json!({"payment_id": "pay_1", "checkout_id": "chk_1", "customer_id": "usr_1",
                   "amount": usd(2500)}),
        ),
        (
            "payment.refunded",
            json!({"payment_id": "pay_1", "refund_id": "ref_1", "order_id": "ord_1",
                   "customer_id": "usr_1", "amount": usd(2500), "source": "return",
                   "source_id": "ret_1"}),
        ),
        (
            "payment.chargeback",
            json!({"payment_id": "pay_1", "order_id": "ord_1", "customer_id": "usr_1",
                   "amount": usd(2500)}),
        ),
        ("order.created", summary("pending")),
        ("order.confirmed", summary("confirmed")),
        (
            "order.failed",
            with(summary("failed"), json!({"reason": "payment failed"})),
        ),
        (
            "order.cancelled",
            with(summary("cancelled"), json!({"reason": "changed my mind"})),
        ),
        (
            "order.fulfilment_started",
            with(
                summary("processing"),
                json!({"reason": "fulfilment started"}),
            ),
        ),
        (
            "order.shipped",
            with(
                summary("shipped"),
                json!({"reason": "shipped", "carrier": "UPS", "tracking_number": "1Z"}),
            ),
        ),
        (
            "order.delivered",
            with(summary("delivered"), json!({"reason": "delivered"})),
        ),
        (
            "order.returned",
            with(
                summary("returned"),
                json!({"reason": "return approved", "return_id": "ret_1"}),
            ),
        ),
        (
            "order.refunded",
            with(
                summary("refunded"),
                json!({"reason": "refund issued", "amount": usd(2500), "refund_id": "ref_1",
                       "source": "return"}),
            ),
        ),
        (
            "order.return_requested",
            json!({"order_id": "ord_1", "order_number": "M-1", "customer_id": "usr_1",
                   "return_id": "ret_1", "items": [{"sku": "TEE", "quantity": 1}],
                   "reason": "too small"}),
        ),
        (
            "webhook.endpoint_disabled",
            json!({"endpoint_id": "wh_1", "url": "https://shop.example/hooks",
                   "reason": "failing", "failing_since": "2026-01-01T00:00:00Z"}),
        ),
        (
            "link.created",
            json!({"link_id": "lnk_1", "code": "aB3dE5f", "owner_id": "usr_1",
                   "url": "https://example.com/"}),
        ),
        (
            "link.updated",
            json!({"link_id": "lnk_1", "code": "aB3dE5f", "owner_id": "usr_1",
                   "url": "https://example.com/new"}),
        ),
        (
            "link.deleted",
            json!({"link_id": "lnk_1", "code": "aB3dE5f", "owner_id": "usr_1"}),
        ),
        (
            "promotion.redeemed",
            json!({"promotion_id": "prm_1", "redemption_id": "rdm_1", "checkout_id": "chk_1",
                   "order_id": "ord_1", "customer_id": "usr_1", "amount": usd(200)}),
        ),
        (
            "promotion.released",
            json!({"promotion_id": "prm_1", "redemption_id": "rdm_1", "checkout_id": "chk_1",
                   "customer_id": "usr_1", "amount": usd(200), "from": "reserved"}),
        ),
        (
            "flash_sale.started",
            json!({"sale_id": "fls_1", "sku": "TEE-1", "price": usd(500), "units": 50,
                   "starts_at": "2026-12-02T07:00:00Z", "ends_at": "2026-12-02T08:00:00Z",
                   "queued": 500}),
        ),
        (
            "flash_sale.sold_out",
            json!({"sale_id": "fls_1", "sku": "TEE-1", "units": 50, "sold": 50}),
        ),
        (
            "flash_sale.ended",
            json!({"sale_id": "fls_1", "sku": "TEE-1", "units": 50, "sold": 48, "returned": 2}),
        ),
        (
            "live.stream_started",
            json!({"stream_id": "lst_1", "seller_id": "usr_s", "title": "Spring drop",
                   "product_ids": ["prd_1"]}),
        ),
        (
            "live.stream_ended",
            json!({"stream_id": "lst_1", "seller_id": "usr_s", "comments": 12}),
        ),
    ]
}

#[test]
fn every_registered_type_has_a_sample_and_types_are_unique() {
    let sampled: Vec<&str> = samples().iter().map(|(t, _)| *t).collect();
    assert_eq!(sampled, TYPES);
    let mut unique = TYPES.to_vec();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), TYPES.len());
}

#[test]
fn every_payload_round_trips_to_the_same_json() {
    for (t, data) in samples() {
        let decoded = decode_any(t, &data).unwrap_or_else(|e| panic!("{t}: {e}"));
        assert_eq!(decoded.event_type(), t);
        assert_eq!(decoded.to_value(), data, "{t}");
    }
}

#[test]
fn unknown_fields_are_ignored_and_missing_required_ones_are_errors() {
    for (t, data) in samples() {
        let mut extra = data.clone();
        if let Value::Object(m) = &mut extra {
            m.insert("added_by_a_newer_producer".into(), json!(true));
        }
        assert!(decode_any(t, &extra).is_ok(), "{t}");
        let Value::Object(m) = &data else {
            panic!("{t} is not an object");
        };
        // The first field of every payload is required.
        let mut missing = m.clone();
        let first = m.keys().next().cloned().unwrap_or_default();
        missing.remove(&first);
        assert!(
            decode_any(t, &Value::Object(missing)).is_err(),
            "{t} without {first}"
        );
    }
    assert!(matches!(
        decode_any("no.such_type", &json!({})),
        Err(DecodeError::UnknownType(_))
    ));
}

#[test]
fn events_of_an_older_producer_still_decode() {
    // Optional fields may be absent (a producer that did not know them yet).
    let blocked = json!({"checkout_id": "chk_1", "customer_id": "usr_1", "decision": "block",
                         "reason": "velocity"});
    let Ok(AnyEvent::FraudFlagged(f)) = decode_any("fraud.flagged", &blocked) else {
        panic!("a blocked payment's fraud.flagged decodes");
    };
    assert_eq!(f.order_id, None);
    assert_eq!(f.aggregate_type(), "checkout");
    assert_eq!(f.aggregate_id(), "chk_1");
    let anonymous = json!({"user_id": "usr_1", "email": "a@example.com", "role": "customer"});
    assert!(decode_any("user.registered", &anonymous).is_ok());
}

#[test]
fn new_event_of_takes_type_aggregate_and_id_from_the_payload() {
    use mercato_kernel::outbox::NewEvent;
    for (t, data) in samples() {
        let Ok(AnyEvent::OrderShipped(p)) = decode_any(t, &data) else {
            continue;
        };
        let e = NewEvent::of(&p);
        assert_eq!(
            (e.event_type.as_str(), e.aggregate_type.as_str()),
            ("order.shipped", "order")
        );
        assert_eq!(e.aggregate_id, "ord_1");
        assert_eq!(e.data, data);
    }
}

/// The docs/api.md row of `event_type` (`| \`type\` | fields… |`).
fn doc_row<'a>(doc: &'a str, event_type: &str) -> Option<&'a str> {
    let cell = format!("| `{event_type}` |");
    doc.lines().find(|l| l.starts_with(&cell))
}

#[test]
fn the_api_doc_lists_every_event_type_with_its_fields() {
    let doc = include_str!("../../../docs/api.md");
    for (t, data) in samples() {
        let row = doc_row(doc, t).unwrap_or_else(|| panic!("docs/api.md has no row for {t}"));
        let Value::Object(m) = &data else {
            panic!("{t} is not an object");
        };
        for field in m.keys() {
            assert!(
                row.contains(&format!("`{field}`")),
                "docs/api.md's row for {t} does not name `{field}`"
            );
        }
    }
}

/// Rust files under `dir`, recursively.
fn rust_files(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

#[test]
fn producers_build_events_only_from_payload_types() {
    let crates = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in ["mercato-commerce/src", "mercato-notify/src", "mercato/src"] {
        rust_files(&crates.join(c), &mut files);
    }
    assert!(
        !files.is_empty(),
        "no sources found under {}",
        crates.display()
    );
    let untyped: Vec<String> = files
        .iter()
        .filter(|f| {
            std::fs::read_to_string(f).is_ok_and(|s| s.contains(concat!("NewEvent::", "new(")))
        })
        .map(|f| f.display().to_string())
        .collect();
    assert!(
        untyped.is_empty(),
        "build events with NewEvent::of(&payload) (a type in mercato-events): {untyped:?}"
    );
}
