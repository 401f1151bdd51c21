//! Events of the payments system (payload types; see the crate docs).
