//! Pure types and rules of live streams: the status machine, input limits, and the shape of a
//! stream event as the hub carries it. No IO.

use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Most characters in a comment.
pub const MAX_COMMENT_CHARS: usize = 500;
/// Most characters in a stream title.
pub const MAX_TITLE_CHARS: usize = 200;
/// Most products pinned to one stream.
pub const MAX_PRODUCTS: usize = 50;

/// A stream's lifecycle: `scheduled → live → ended`, or `scheduled → ended` (cancelled).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum StreamStatus {
    Scheduled,
    Live,
    Ended,
}

/// What a seller asks of a stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamAction {
    Start,
    End,
}

/// A transition the status machine does not allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidTransition {
    pub from: StreamStatus,
    pub action: StreamAction,
}

impl StreamStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            StreamStatus::Scheduled => "scheduled",
            StreamStatus::Live => "live",
            StreamStatus::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<StreamStatus> {
        match s {
            "scheduled" => Some(StreamStatus::Scheduled),
            "live" => Some(StreamStatus::Live),
            "ended" => Some(StreamStatus::Ended),
            _ => None,
        }
    }

    /// The one place that says which changes are allowed.
    pub fn transition(self, action: StreamAction) -> Result<StreamStatus, InvalidTransition> {
        use StreamAction::*;
        use StreamStatus::*;
        match (self, action) {
            (Scheduled, Start) => Ok(Live),
            (Scheduled | Live, End) => Ok(Ended),
            (from, action) => Err(InvalidTransition { from, action }),
        }
    }
}

/// The kinds of events on a stream's feed (`event:` of the SSE frame).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum EventKind {
    Comment,
    CommentDeleted,
    Product,
    Pinned,
    Ended,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Comment => "comment",
            EventKind::CommentDeleted => "comment_deleted",
            EventKind::Product => "product",
            EventKind::Pinned => "pinned",
            EventKind::Ended => "ended",
        }
    }

    pub fn parse(s: &str) -> Option<EventKind> {
        Some(match s {
            "comment" => EventKind::Comment,
            "comment_deleted" => EventKind::CommentDeleted,
            "product" => EventKind::Product,
            "pinned" => EventKind::Pinned,
            "ended" => EventKind::Ended,
            _ => return None,
        })
    }
}

/// One event of a stream's log: `seq` is its SSE `id:` (increasing per stream, without holes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamEvent {
    pub stream_id: String,
    pub seq: i64,
    pub kind: EventKind,
    /// Unix microseconds when it was written.
    pub at: i64,
    /// The JSON `data:` (shared by every subscriber's copy).
    pub data: Arc<str>,
}

/// A validated comment body: 1–500 characters after trimming.
pub fn comment_body(raw: &str) -> Result<String, &'static str> {
    let b = raw.trim();
    if b.is_empty() {
        return Err("must not be empty");
    }
    if b.chars().count() > MAX_COMMENT_CHARS {
        return Err("must be at most 500 characters");
    }
    if b.chars().any(|c| c.is_control() && c != '\n') {
        return Err("must not contain control characters");
    }
    Ok(b.to_owned())
}

/// A validated title: 1–200 characters after trimming.
pub fn title(raw: &str) -> Result<String, &'static str> {
    let t = raw.trim();
    if t.is_empty() {
        return Err("must not be empty");
    }
    if t.chars().count() > MAX_TITLE_CHARS {
        return Err("must be at most 200 characters");
    }
    if t.chars().any(char::is_control) {
        return Err("must not contain control characters");
    }
    Ok(t.to_owned())
}

/// A `Last-Event-ID` (header or query): a non-negative event sequence number.
pub fn last_event_id(raw: &str) -> Option<i64> {
    raw.trim().parse::<i64>().ok().filter(|v| *v >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_status_machine_allows_exactly_its_table() {
        use StreamAction::*;
        use StreamStatus::*;
        let all = [Scheduled, Live, Ended];
        for from in all {
            for action in [Start, End] {
                let expected = match (from, action) {
                    (Scheduled, Start) => Some(Live),
                    (Scheduled, End) | (Live, End) => Some(Ended),
                    _ => None,
                };
                assert_eq!(
                    from.transition(action).ok(),
                    expected,
                    "{from:?} {action:?}"
                );
            }
            assert_eq!(StreamStatus::parse(from.as_str()), Some(from));
        }
    }

    #[test]
    fn comment_bodies_are_trimmed_and_bounded() {
        assert_eq!(comment_body("  hi  "), Ok("hi".to_owned()));
        assert!(comment_body("   ").is_err());
        assert!(comment_body(&"é".repeat(500)).is_ok());
        assert!(comment_body(&"é".repeat(501)).is_err());
        assert!(comment_body("a\u{7}b").is_err());
        assert!(title("").is_err());
        assert_eq!(last_event_id(" 12 "), Some(12));
        assert_eq!(last_event_id("-1"), None);
        assert_eq!(last_event_id("x"), None);
    }

    #[test]
    fn event_kinds_round_trip() {
        for k in [
            EventKind::Comment,
            EventKind::CommentDeleted,
            EventKind::Product,
            EventKind::Pinned,
            EventKind::Ended,
        ] {
            assert_eq!(EventKind::parse(k.as_str()), Some(k));
        }
    }
}
