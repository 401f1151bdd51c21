//! Keyset pagination: `?limit=&cursor=` in, `{data, next_cursor}` out. Cursors are opaque
//! (base64url of a small JSON array of the sort key of the last row); a malformed one is a 400.

use crate::error::{ApiError, Code};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub const DEFAULT_LIMIT: u32 = 20;
pub const MAX_LIMIT: u32 = 100;

/// Raw `limit` and `cursor` query parameters.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageQuery {
    /// 1..=100, default 20.
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    /// Opaque cursor from a previous page's `next_cursor`.
    pub cursor: Option<String>,
}

/// Validated page request; `K` is the keyset (sort key of the last row seen).
#[derive(Debug, Clone)]
pub struct PageRequest<K> {
    pub limit: u32,
    pub after: Option<K>,
}

impl PageQuery {
    pub fn parse<K: DeserializeOwned>(&self) -> Result<PageRequest<K>, ApiError> {
        let limit = match &self.limit {
            None => DEFAULT_LIMIT,
            Some(raw) => match raw.trim().parse::<u32>() {
                Ok(n) if (1..=MAX_LIMIT).contains(&n) => n,
                _ => {
                    return Err(ApiError::invalid(
                        "limit",
                        format!("limit must be an integer from 1 to {MAX_LIMIT}"),
                    ));
                }
            },
        };
        let after = match &self.cursor {
            None => None,
            Some(c) if c.is_empty() => None,
            Some(c) => Some(decode_cursor(c)?),
        };
        Ok(PageRequest { limit, after })
    }
}

pub fn encode_cursor<K: Serialize>(key: &K) -> String {
    URL_SAFE_NO_PAD.encode(serde_json::to_vec(key).unwrap_or_default())
}

pub fn decode_cursor<K: DeserializeOwned>(raw: &str) -> Result<K, ApiError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(raw.as_bytes())
        .map_err(|_| ApiError::new(Code::InvalidCursor))?;
    serde_json::from_slice(&bytes).map_err(|_| ApiError::new(Code::InvalidCursor))
}

/// A page of results.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Page<T> {
    pub data: Vec<T>,
    pub next_cursor: Option<String>,
}

impl<T> Page<T> {
    /// Builds a page from `limit + 1` fetched rows: the extra row only signals that another
    /// page exists; the cursor is the key of the last row returned.
    pub fn from_rows<K: Serialize>(
        mut rows: Vec<T>,
        limit: u32,
        key_of: impl Fn(&T) -> K,
    ) -> Page<T> {
        let limit = limit as usize;
        let has_more = rows.len() > limit;
        rows.truncate(limit);
        let next_cursor = if has_more {
            rows.last().map(|r| encode_cursor(&key_of(r)))
        } else {
            None
        };
        Page {
            data: rows,
            next_cursor,
        }
    }

    pub fn map<U>(self, f: impl FnMut(T) -> U) -> Page<U> {
        Page {
            data: self.data.into_iter().map(f).collect(),
            next_cursor: self.next_cursor,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursor_round_trip_and_garbage() {
        let c = encode_cursor(&(1234_i64, "ord_X".to_string()));
        let back: (i64, String) = decode_cursor(&c).expect("decode");
        assert_eq!(back, (1234, "ord_X".into()));
        assert!(decode_cursor::<(i64, String)>("!!!").is_err());
        assert!(decode_cursor::<(i64, String)>("e30").is_err());
    }

    #[test]
    fn limits_are_validated() {
        let q = PageQuery {
            limit: Some("0".into()),
            cursor: None,
        };
        assert!(q.parse::<String>().is_err());
        let q = PageQuery {
            limit: Some("101".into()),
            cursor: None,
        };
        assert!(q.parse::<String>().is_err());
        let q = PageQuery::default();
        assert_eq!(q.parse::<String>().map(|p| p.limit).ok(), Some(20));
    }

    #[test]
    fn page_from_rows_sets_cursor_only_when_more() {
        let p = Page::from_rows(vec![1, 2, 3], 2, |x| *x);
        assert_eq!(p.data, vec![1, 2]);
        assert!(p.next_cursor.is_some());
        let p = Page::from_rows(vec![1, 2], 2, |x| *x);
        assert!(p.next_cursor.is_none());
    }
}
