//! Events of the identity system (payload types; see the crate docs).
