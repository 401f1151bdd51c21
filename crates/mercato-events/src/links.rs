//! Events of the links system (payload types; see the crate docs).

use crate::payload;
use serde::{Deserialize, Serialize};

/// `link.created`: a short link was created.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkCreated {
    pub link_id: String,
    pub code: String,
    pub owner_id: String,
    pub url: String,
}
payload!(LinkCreated, "link.created", "link", link_id);

/// `link.updated`: a short link's destination or rules changed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkUpdated {
    pub link_id: String,
    pub code: String,
    pub owner_id: String,
    pub url: String,
}
payload!(LinkUpdated, "link.updated", "link", link_id);

/// `link.deleted`: a short link was deleted (its code stays taken).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkDeleted {
    pub link_id: String,
    pub code: String,
    pub owner_id: String,
}
payload!(LinkDeleted, "link.deleted", "link", link_id);
