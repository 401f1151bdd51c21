//! Events of the promotions system (payload types; see the crate docs).
