//! Events of the inventory system (payload types; see the crate docs).
