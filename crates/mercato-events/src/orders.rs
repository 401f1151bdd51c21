//! Events of the orders system (payload types; see the crate docs).
