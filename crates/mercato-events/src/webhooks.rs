//! Events of the webhooks system (payload types; see the crate docs).
