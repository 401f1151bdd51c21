//! Commerce and notifications end to end: a real purchase, shipment and refund reach the
//! customer through the notification platform (SMTP peer), once each.

use crate::inventory::stocked;
use crate::notifications::app_with_peers;
use serde_json::json;
use std::time::Duration;

#[tokio::test]
async fn a_purchase_shipment_and_cancellation_notify_the_customer_by_email_once_each() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let (admin, sku, de, _) = stocked(&app, "nt").await;
    admin.set_stock(&sku, &de, 5).await;
    let (c, order) = crate::orders::bought(&app, &sku, 1).await;
    let email = c.me().await.body["email"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let number = order["order_number"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let oid = order["id"].as_str().unwrap_or_default().to_owned();
    let to_customer = |peers: &crate::notifications::Peers| {
        peers
            .smtp
            .messages()
            .into_iter()
            .filter(|m| m.to.iter().any(|t| t.contains(&email)))
            .collect::<Vec<_>>()
    };
    let got = app
        .eventually(Duration::from_secs(20), || async {
            let msgs = to_customer(&peers);
            msgs.iter()
                .any(|m| m.body().contains(&number))
                .then_some(msgs)
        })
        .await;
    assert!(got.is_some(), "order confirmation email to {email}");
    let r = c
        .post(
            &format!("/orders/{oid}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let both = app
        .eventually(Duration::from_secs(20), || async {
            let msgs = to_customer(&peers);
            (msgs.len() >= 2).then_some(msgs)
        })
        .await
        .unwrap_or_default();
    assert!(
        both.len() >= 2,
        "a refund notification follows the cancellation"
    );
    // Delivered at least once through the bus, but applied once: no duplicates later.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(to_customer(&peers).len(), both.len());
}
