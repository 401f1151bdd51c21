//! Events of the catalog system (payload types; see the crate docs).
