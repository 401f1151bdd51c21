//! Events of the identity system (payload types; see the crate docs).

use crate::payload;
use mercato_kernel::auth::Role;
use serde::{Deserialize, Serialize};

/// `user.registered`: an account was created (self-registration or by an admin).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserRegistered {
    pub user_id: String,
    pub email: String,
    /// The display name, when one was given.
    #[serde(default)]
    pub name: Option<String>,
    pub role: Role,
}
payload!(UserRegistered, "user.registered", "user", user_id);

/// `user.email_verification_requested`: a user asked to prove their email; the notification
/// platform mails them `token` (valid until `expires_at`, microseconds).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailVerificationRequested {
    pub user_id: String,
    pub email: String,
    pub token: String,
    pub expires_at: i64,
}
payload!(
    EmailVerificationRequested,
    "user.email_verification_requested",
    "user",
    user_id
);

/// `user.email_verified`: the user holds this email (verified now, or signing in with an
/// email verified earlier): guest orders bought with it attach to the account.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmailVerified {
    pub user_id: String,
    pub email: String,
}
payload!(EmailVerified, "user.email_verified", "user", user_id);
