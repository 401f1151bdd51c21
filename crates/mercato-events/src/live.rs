//! Events of the live system (payload types; see the crate docs).
