//! Guest checkout (issue 17, API.md "Guest checkout"): buying without an account runs the
//! signed-in path with a guest token standing in for the customer.

use crate::inventory::stocked;
use crate::notifications::app_with_peers;
use mercato_testkit::{Client, TestApp, sample_address, spawn_app, spawn_app_with};
use serde_json::{Value, json};
use std::time::Duration;

/// An anonymous guest with `qty` of `sku` in a guest cart.
async fn guest_cart(app: &TestApp, sku: &str, qty: i64) -> (Client, String) {
    let guest = app.api.anonymous();
    let cart = guest.create_cart().await;
    assert_eq!(cart.status, 201, "{}", cart.body);
    let cart = cart.id();
    let r = guest.add_to_cart(&cart, sku, qty).await;
    assert_eq!(r.status, 200, "{}", r.body);
    (guest, cart)
}

fn guest_checkout(cart: &str, email: &str) -> Value {
    json!({"cart_id": cart, "email": email, "shipping_address": sample_address()})
}

#[tokio::test]
async fn a_guest_buys_and_reads_the_order_with_its_token_only() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "guest").await;
    admin.set_stock(&sku, &de, 5).await;
    let (guest, cart) = guest_cart(&app, &sku, 2).await;

    // No email: a clear 422, nothing reserved.
    let r = guest
        .post(
            "/checkouts",
            json!({"cart_id": cart, "shipping_address": sample_address()}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
    assert_eq!(admin.stock(&sku).await.body["reserved"], 0);

    let chk = guest
        .post("/checkouts", guest_checkout(&cart, "Guest@Example.com"))
        .await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    assert_eq!(chk.body["email"], "guest@example.com");
    let token = chk.body["guest_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        token.starts_with("gst_") && token.len() >= 4 + 26,
        "{token}"
    );
    let as_guest = guest.with_token(&token);

    // The token reads the checkout (without showing itself again) and pays it.
    let r = as_guest.get(&format!("/checkouts/{}", chk.id())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.get("guest_token").is_none());
    let paid = as_guest.pay(&chk.id(), "tok_visa", "guest-pay-1").await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    let order_id = paid.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // A retry with the same key is the same order.
    let again = as_guest.pay(&chk.id(), "tok_visa", "guest-pay-1").await;
    assert_eq!(again.body["order_id"], order_id.as_str());

    let r = as_guest.get(&format!("/orders/{order_id}")).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "confirmed");
    let r = guest
        .get(&format!("/orders/{order_id}?token={token}"))
        .await;
    assert_eq!(r.status, 200, "the email link reads the order: {}", r.body);

    // Another secret, none, or someone else's account: 404.
    let other = guest.with_token(&mercato_kernel::auth::new_guest_token());
    assert_eq!(other.get(&format!("/orders/{order_id}")).await.status, 404);
    assert_eq!(guest.get(&format!("/orders/{order_id}")).await.status, 404);
    let r = guest
        .get(&format!("/orders/{order_id}?token=gst_0000"))
        .await;
    assert_eq!(r.status, 404);
    let customer = app.customer().await;
    assert_eq!(
        customer.get(&format!("/orders/{order_id}")).await.status,
        404
    );
    assert_eq!(
        other.get(&format!("/checkouts/{}", chk.id())).await.status,
        404
    );

    // The token grants nothing else.
    assert_eq!(as_guest.get("/me").await.status, 403);
    assert_eq!(as_guest.create_cart().await.status, 403);
    assert_eq!(as_guest.get("/admin/sagas").await.status, 403);

    // The guest cancels their order: refunded and restocked, once.
    let r = as_guest
        .post(
            &format!("/orders/{order_id}/cancel"),
            json!({"reason": "changed my mind"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.body["status"], "cancelled");
    assert_eq!(admin.stock(&sku).await.body["available"], 5);
}

#[tokio::test]
async fn a_signed_in_users_cart_is_not_a_guest_cart() {
    let app = spawn_app().await;
    let (admin, sku, de, _) = stocked(&app, "gowned").await;
    admin.set_stock(&sku, &de, 5).await;
    let customer = app.customer().await;
    let cart = customer.create_cart().await.id();
    assert_eq!(customer.add_to_cart(&cart, &sku, 1).await.status, 200);
    // Knowing a user's cart id does not let a guest check it out.
    let r = app
        .api
        .anonymous()
        .post("/checkouts", guest_checkout(&cart, "thief@example.com"))
        .await;
    assert_eq!(r.status, 404, "{}", r.body);
    // A signed-in checkout takes no email: it is the account's.
    let r = customer
        .post("/checkouts", guest_checkout(&cart, "other@example.com"))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);
}

#[tokio::test]
async fn sixty_guests_racing_for_twenty_units_make_exactly_twenty_orders() {
    let app = spawn_app_with(|s| s.guest_checkouts_per_hour_per_ip = 1000).await;
    let (admin, sku, de, _) = stocked(&app, "grush").await;
    admin.set_stock(&sku, &de, 20).await;
    let mut guests = Vec::new();
    for _ in 0..60 {
        guests.push(guest_cart(&app, &sku, 1).await);
    }
    let mut tasks = Vec::new();
    for (i, (guest, cart)) in guests.into_iter().enumerate() {
        tasks.push(tokio::spawn(async move {
            let chk = guest
                .post(
                    "/checkouts",
                    guest_checkout(&cart, &format!("g{i}@example.com")),
                )
                .await;
            if chk.status != 201 {
                assert_eq!(chk.code(), "insufficient_stock", "{}", chk.body);
                return None;
            }
            let token = chk.body["guest_token"]
                .as_str()
                .unwrap_or_default()
                .to_owned();
            let r = guest
                .with_token(&token)
                .pay(&chk.id(), "tok_visa", &format!("g{i}"))
                .await;
            assert_eq!(r.status, 201, "{}", r.body);
            Some(r.body["order_id"].as_str().unwrap_or_default().to_owned())
        }));
    }
    let mut orders = Vec::new();
    for t in tasks {
        if let Some(o) = t.await.unwrap_or_else(|e| panic!("{e}")) {
            orders.push(o);
        }
    }
    orders.sort();
    orders.dedup();
    assert_eq!(orders.len(), 20);
    let stock = admin.stock(&sku).await.body;
    assert_eq!(stock["on_hand"], 0);
    assert_eq!(stock["reserved"], 0);
    let captures = app.gateway.charges().iter().filter(|c| c.captured).count();
    assert_eq!(captures, 20, "one capture per order");
}

#[tokio::test]
async fn guest_checkouts_are_rate_limited_per_email() {
    let app = spawn_app_with(|s| s.guest_checkouts_per_hour_per_email = 2).await;
    let (admin, sku, de, _) = stocked(&app, "glimit").await;
    admin.set_stock(&sku, &de, 50).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let (guest, cart) = guest_cart(&app, &sku, 1).await;
        let r = guest
            .post("/checkouts", guest_checkout(&cart, "same@example.com"))
            .await;
        statuses.push(r.status);
        if r.status == 429 {
            assert!(r.header("retry-after").is_some());
        }
    }
    assert_eq!(statuses, vec![201, 201, 429]);
}

#[tokio::test]
async fn the_confirmation_goes_to_the_guests_email_with_a_link_to_the_order() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let (admin, sku, de, _) = stocked(&app, "gmail").await;
    admin.set_stock(&sku, &de, 5).await;
    let (guest, cart) = guest_cart(&app, &sku, 1).await;
    let chk = guest
        .post("/checkouts", guest_checkout(&cart, "buyer@example.com"))
        .await;
    assert_eq!(chk.status, 201, "{}", chk.body);
    let token = chk.body["guest_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let paid = guest
        .with_token(&token)
        .pay(&chk.id(), "tok_visa", "m1")
        .await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    let order_id = paid.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Admins also get a low-stock email; wait for the guest's.
    let mail = app
        .eventually(Duration::from_secs(10), || {
            let mails = peers.smtp.messages();
            async move {
                mails
                    .into_iter()
                    .find(|m| m.to.iter().any(|t| t.contains("buyer@example.com")))
            }
        })
        .await
        .unwrap_or_else(|| panic!("no confirmation to the guest: {:?}", peers.smtp.messages()));
    let body = quoted_printable(&mail.body());
    let link = format!("/api/v1/orders/{order_id}?token={token}");
    assert!(body.contains(&link), "{body}");
    // The link opens the order.
    let r = guest.get(link.trim_start_matches("/api/v1")).await;
    assert_eq!(r.status, 200, "{}", r.body);
}

/// Decodes a quoted-printable body (soft line breaks and `=XX` escapes).
fn quoted_printable(s: &str) -> String {
    let s = s.replace("=\r\n", "").replace("=\n", "");
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (b[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'=', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The token of the newest verification email to `to`.
async fn verification_token(
    app: &TestApp,
    peers: &crate::notifications::Peers,
    to: &str,
) -> String {
    let to = to.to_owned();
    app.eventually(Duration::from_secs(10), || {
        let mails = peers.smtp.messages();
        let to = to.clone();
        async move {
            mails
                .iter()
                .rev()
                .filter(|m| m.to.iter().any(|t| t.contains(&to)))
                .map(|m| quoted_printable(&m.body()))
                .find_map(|body| {
                    let start = body.find("evt_")?;
                    let token: String = body[start..]
                        .chars()
                        .take_while(char::is_ascii_alphanumeric_or_underscore)
                        .collect();
                    Some(token)
                })
        }
    })
    .await
    .unwrap_or_else(|| panic!("no verification email to {to}"))
}

trait TokenChar {
    fn is_ascii_alphanumeric_or_underscore(&self) -> bool;
}
impl TokenChar for char {
    fn is_ascii_alphanumeric_or_underscore(&self) -> bool {
        self.is_ascii_alphanumeric() || *self == '_'
    }
}

#[tokio::test]
async fn guest_orders_attach_to_the_account_once_its_email_is_verified() {
    let (app, peers) = app_with_peers(|_| {}).await;
    let (admin, sku, de, _) = stocked(&app, "gattach").await;
    admin.set_stock(&sku, &de, 5).await;
    let (guest, cart) = guest_cart(&app, &sku, 1).await;
    let chk = guest
        .post("/checkouts", guest_checkout(&cart, "later@example.com"))
        .await;
    let token = chk.body["guest_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let paid = guest
        .with_token(&token)
        .pay(&chk.id(), "tok_visa", "a1")
        .await;
    assert_eq!(paid.status, 201, "{}", paid.body);
    let order_id = paid.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();

    // Registering with the email is not proof of owning it: nothing attaches yet.
    let r = app
        .api
        .register("later@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status, 201, "{}", r.body);
    assert!(r.body["user"]["email_verified_at"].is_null());
    let user = app
        .api
        .with_token(r.body["access_token"].as_str().unwrap_or_default());
    assert_eq!(user.get(&format!("/orders/{order_id}")).await.status, 404);

    // A wrong token is a 422 and verifies nothing.
    let r = app
        .api
        .post(
            "/auth/verify-email",
            json!({"token": "evt_0000000000000000000000000"}),
        )
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    let r = user.post("/me/email-verification", Value::Null).await;
    assert_eq!(r.status, 202, "{}", r.body);
    assert_eq!(r.body["status"], "sent");
    let evt = verification_token(&app, &peers, "later@example.com").await;
    let r = app
        .api
        .post("/auth/verify-email", json!({"token": evt}))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body["email_verified_at"].is_string(), "{}", r.body);
    // Used once.
    let r = app
        .api
        .post("/auth/verify-email", json!({"token": evt}))
        .await;
    assert_eq!(r.status, 422, "{}", r.body);

    let listed = app
        .eventually(Duration::from_secs(10), || {
            let user = user.clone();
            let order_id = order_id.clone();
            async move {
                let r = user.get("/orders").await;
                r.body["data"]
                    .as_array()
                    .is_some_and(|d| d.iter().any(|o| o["id"] == order_id.as_str()))
                    .then_some(())
            }
        })
        .await;
    assert!(listed.is_some(), "the guest order attached to the account");
    assert_eq!(user.get(&format!("/orders/{order_id}")).await.status, 200);
    // The guest's token still opens it (the link in the email keeps working).
    let r = guest
        .with_token(&token)
        .get(&format!("/orders/{order_id}"))
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Asking again once verified sends nothing.
    let r = user.post("/me/email-verification", Value::Null).await;
    assert_eq!(r.body["status"], "already_verified");

    // A guest order bought after verification attaches at the next sign-in.
    let (guest2, cart2) = guest_cart(&app, &sku, 1).await;
    let chk2 = guest2
        .post("/checkouts", guest_checkout(&cart2, "later@example.com"))
        .await;
    let token2 = chk2.body["guest_token"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let paid2 = guest2
        .with_token(&token2)
        .pay(&chk2.id(), "tok_visa", "a2")
        .await;
    assert_eq!(paid2.status, 201, "{}", paid2.body);
    let order2 = paid2.body["order_id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let r = app
        .api
        .login("later@example.com", "correct horse battery")
        .await;
    assert_eq!(r.status, 200, "{}", r.body);
    let attached = app
        .eventually(Duration::from_secs(10), || {
            let user = user.clone();
            let order2 = order2.clone();
            async move {
                (user.get(&format!("/orders/{order2}")).await.status == 200).then_some(())
            }
        })
        .await;
    assert!(attached.is_some(), "attached at sign-in");
}
