//! Events of the checkout system (payload types; see the crate docs).
