//! Demo data for `serve --demo`: accounts with known credentials (and, as modules land, a
//! catalog, stock and a coupon). Loading is idempotent: existing rows are kept.

use mercato_commerce::AppState;
use mercato_commerce::identity::IdentityError;
use mercato_kernel::auth::Role;

pub const ADMIN_EMAIL: &str = "admin@demo.mercato";
pub const SELLER_EMAIL: &str = "seller@demo.mercato";
pub const CUSTOMER_EMAIL: &str = "customer@demo.mercato";
pub const DEMO_PASSWORD: &str = "demo-password-123";

/// Loads the demo data; returns the lines to print.
pub async fn load(state: &AppState) -> anyhow::Result<Vec<String>> {
    for (email, role, name) in [
        (ADMIN_EMAIL, Role::Admin, "Demo Admin"),
        (SELLER_EMAIL, Role::Seller, "Demo Seller"),
        (CUSTOMER_EMAIL, Role::Customer, "Demo Customer"),
    ] {
        match state
            .identity
            .create_user(email, DEMO_PASSWORD, Some(name), role)
            .await
        {
            Ok(_) | Err(IdentityError::EmailTaken) => {}
            Err(e) => return Err(anyhow::anyhow!("creating demo user {email}: {e}")),
        }
    }
    Ok(vec![
        format!("  admin:    {ADMIN_EMAIL} / {DEMO_PASSWORD}"),
        format!("  seller:   {SELLER_EMAIL} / {DEMO_PASSWORD}"),
        format!("  customer: {CUSTOMER_EMAIL} / {DEMO_PASSWORD}"),
    ])
}
