//! Events of the media system (payload types; see the crate docs).
