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
