//! Live routes (`/api/v1/live/…`): parse → call the service → map to a response. The feed
//! (`GET /live/streams/{id}/events`) is server-sent events.

use crate::hub::{Frame, Subscription};
use crate::model::{self, StreamAction, StreamStatus};
use crate::service::{CommentView, Live, NewStream, StreamView};
use axum::Json;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::{Authorized, MaybePrincipal, People, Staff};
use mercato_kernel::error::{ApiError, Code, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery, ClientIp, DeferredJson, created};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::convert::Infallible;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<Live> {
    OpenApiRouter::new()
        .routes(routes!(create_stream, list_streams))
        .routes(routes!(get_stream))
        .routes(routes!(start_stream))
        .routes(routes!(end_stream))
        .routes(routes!(post_comment, list_comments))
        .routes(routes!(delete_comment))
        .routes(routes!(ban_user))
        .routes(routes!(pin_product))
        .routes(routes!(stream_events))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateStream {
    /// 1–200 characters.
    #[schema(min_length = 1, max_length = 200)]
    pub title: String,
    /// Products shown in the stream (existing, at most 50, no repeats).
    #[serde(default)]
    #[schema(max_items = 50)]
    pub product_ids: Vec<String>,
    /// When the stream is planned to start; absent or past = live now.
    pub starts_at: Option<Timestamp>,
}

/// Create a stream (sellers and admins; the caller is its seller).
#[utoipa::path(post, path = "/live/streams", tag = "live", request_body = CreateStream,
    responses((status = 201, body = StreamView), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_stream(
    State(l): State<Live>,
    who: Authorized<Staff>,
    ApiJson(b): ApiJson<CreateStream>,
) -> Result<Response, ApiError> {
    let row = l
        .create(
            &who,
            NewStream {
                title: b.title,
                product_ids: b.product_ids,
                starts_at: b.starts_at,
            },
        )
        .await?;
    Ok(created(l.view(&row).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// `scheduled`, `live` or `ended`.
    #[param(pattern = "^(scheduled|live|ended)$")]
    pub status: Option<String>,
    /// Only this seller's streams.
    pub seller_id: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// Streams, newest first (public).
#[utoipa::path(get, path = "/live/streams", tag = "live", params(ListQuery),
    responses((status = 200, body = Page<StreamView>), (status = 400, body = Problem)))]
async fn list_streams(
    State(l): State<Live>,
    ApiQuery(q): ApiQuery<ListQuery>,
) -> Result<Json<Page<StreamView>>, ApiError> {
    let status = match q.status.as_deref() {
        None => None,
        Some(s) => Some(StreamStatus::parse(s).ok_or_else(|| {
            ApiError::new(Code::InvalidQuery).detail("status must be scheduled, live or ended")
        })?),
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<(i64, String)>()?;
    if let Some(seller) = q.seller_id.as_deref()
        && seller.contains('\0')
    {
        return Err(ApiError::new(Code::InvalidQuery).detail("seller_id is not a user id"));
    }
    let rows = l
        .list(status, q.seller_id.as_deref(), page.after, page.limit)
        .await?;
    let page = Page::from_rows(rows, page.limit, |r| (r.created_at, r.id.clone()));
    let mut data = Vec::with_capacity(page.data.len());
    for r in &page.data {
        data.push(l.view(r).await?);
    }
    Ok(Json(Page {
        data,
        next_cursor: page.next_cursor,
    }))
}

/// A stream (public).
#[utoipa::path(get, path = "/live/streams/{id}", tag = "live", params(("id" = String, Path)),
    responses((status = 200, body = StreamView), (status = 404, body = Problem)))]
async fn get_stream(
    State(l): State<Live>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, ApiError> {
    let s = l.stream(&id).await?;
    Ok(Json(l.view(&s).await?))
}

/// Start a scheduled stream (its seller or an admin).
#[utoipa::path(post, path = "/live/streams/{id}/start", tag = "live", params(("id" = String, Path)),
    responses((status = 200, body = StreamView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn start_stream(
    State(l): State<Live>,
    who: Authorized<Staff>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, ApiError> {
    let s = l.act(&who, &id, StreamAction::Start).await?;
    Ok(Json(l.view(&s).await?))
}

/// End a stream (its seller or an admin): subscribers get `ended` and the feed closes.
#[utoipa::path(post, path = "/live/streams/{id}/end", tag = "live", params(("id" = String, Path)),
    responses((status = 200, body = StreamView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn end_stream(
    State(l): State<Live>,
    who: Authorized<Staff>,
    Path(id): Path<String>,
) -> Result<Json<StreamView>, ApiError> {
    let s = l.act(&who, &id, StreamAction::End).await?;
    Ok(Json(l.view(&s).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PostComment {
    /// 1–500 characters (trimmed).
    #[schema(min_length = 1, max_length = 500)]
    pub body: String,
}

/// Post a comment (signed-in people; at most 1 per second and 20 per minute per user per
/// stream). Durable before the 201.
#[utoipa::path(post, path = "/live/streams/{id}/comments", tag = "live", params(("id" = String, Path)),
    request_body = PostComment,
    responses((status = 201, body = CommentView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)),
    security(("bearer" = [])))]
async fn post_comment(
    State(l): State<Live>,
    who: Authorized<People>,
    Path(id): Path<String>,
    body: DeferredJson<PostComment>,
) -> Result<Response, ApiError> {
    // A banned user learns it before anything about the body.
    l.may_comment(&who, &id).await?;
    let b = body.parse()?;
    Ok(created(l.comment(&who, &id, &b.body).await?).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct CommentsQuery {
    /// Comments after this feed id (`seq`); 0 or absent = from the first.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub since: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
}

/// Comments after `since`, oldest first (public catch-up over HTTP; deleted ones left out).
/// `next_cursor` is the `since` of the next page.
#[utoipa::path(get, path = "/live/streams/{id}/comments", tag = "live",
    params(("id" = String, Path), CommentsQuery),
    responses((status = 200, body = Page<CommentView>), (status = 400, body = Problem), (status = 404, body = Problem)))]
async fn list_comments(
    State(l): State<Live>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<CommentsQuery>,
) -> Result<Json<Page<CommentView>>, ApiError> {
    let since = match q.since.as_deref() {
        None | Some("") => 0,
        Some(s) => model::last_event_id(s).ok_or_else(|| {
            ApiError::new(Code::InvalidQuery).detail("since must be a non-negative integer")
        })?,
    };
    let limit = match q.limit.as_deref() {
        None | Some("") => 100,
        Some(s) => s
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| (1..=100).contains(n))
            .ok_or_else(|| {
                ApiError::new(Code::InvalidQuery).detail("limit must be between 1 and 100")
            })?,
    };
    let mut rows = l.comments(&id, since, limit).await?;
    let more = rows.len() > limit as usize;
    rows.truncate(limit as usize);
    let next_cursor = more
        .then(|| rows.last().map(|c| c.seq.to_string()))
        .flatten();
    Ok(Json(Page {
        data: rows,
        next_cursor,
    }))
}

/// Delete a comment (the stream's seller or an admin): subscribers get `comment_deleted`.
#[utoipa::path(delete, path = "/live/comments/{id}", tag = "live", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn delete_comment(
    State(l): State<Live>,
    who: Authorized<Staff>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    l.delete_comment(&who, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BanRequest {
    /// The user to ban (`usr_…`).
    pub user_id: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct BanView {
    pub stream_id: String,
    pub user_id: String,
    pub at: Timestamp,
}

/// Ban a user from posting in the stream (its seller or an admin); their posts answer 403
/// `banned`. Banning twice keeps the first ban.
#[utoipa::path(post, path = "/live/streams/{id}/bans", tag = "live", params(("id" = String, Path)),
    request_body = BanRequest,
    responses((status = 201, body = BanView), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn ban_user(
    State(l): State<Live>,
    who: Authorized<Staff>,
    Path(id): Path<String>,
    body: DeferredJson<BanRequest>,
) -> Result<Response, ApiError> {
    let s = l.owned(&who, &id).await?;
    let b = body.parse()?;
    let at = l.ban(&who, &s.id, &b.user_id).await?;
    Ok(created(BanView {
        stream_id: s.id,
        user_id: b.user_id.trim().to_owned(),
        at,
    })
    .into_response())
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PinRequest {
    /// An existing product (added to the stream's products if it was not among them).
    pub product_id: String,
}

/// Pin a product (its seller or an admin): subscribers get `pinned`.
#[utoipa::path(post, path = "/live/streams/{id}/pin", tag = "live", params(("id" = String, Path)),
    request_body = PinRequest,
    responses((status = 200, body = StreamView), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn pin_product(
    State(l): State<Live>,
    who: Authorized<Staff>,
    Path(id): Path<String>,
    body: DeferredJson<PinRequest>,
) -> Result<Json<StreamView>, ApiError> {
    let s = l.owned(&who, &id).await?;
    let b = body.parse()?;
    let s = l.pin(&s, b.product_id.trim()).await?;
    Ok(Json(l.view(&s).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// Same as the `Last-Event-ID` header (for clients that cannot set headers); the header wins.
    #[param(value_type = Option<i64>, minimum = 0)]
    pub last_event_id: Option<String>,
}

/// The stream's feed as server-sent events (public). First a `retry:` hint; then, with
/// `Last-Event-ID`, every event after it from the last 5 minutes (an older id gets one `gap`
/// event `{missed, last_event_id}` first); then live: `comment`, `comment_deleted`, `product`,
/// `pinned`, `ended` (each with an increasing `id:`), and `viewers` (no `id:`). A comment
/// line every 15 s keeps proxies open. A subscriber too slow to keep up is disconnected and
/// resumes with `Last-Event-ID`. An ended stream with nothing left to send answers 204 (which
/// tells `EventSource` to stop reconnecting).
#[utoipa::path(get, path = "/live/streams/{id}/events", tag = "live",
    params(("id" = String, Path), EventsQuery,
           ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event id")),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 204),
              (status = 400, body = Problem), (status = 404, body = Problem), (status = 429, body = Problem)))]
async fn stream_events(
    State(l): State<Live>,
    MaybePrincipal(who): MaybePrincipal,
    ip: Option<axum::Extension<ClientIp>>,
    headers: HeaderMap,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<EventsQuery>,
) -> Result<Response, ApiError> {
    let raw = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.last_event_id)
        .filter(|s| !s.trim().is_empty());
    let last = match raw {
        Some(s) => Some(model::last_event_id(&s).ok_or_else(|| {
            ApiError::new(Code::BadRequest)
                .detail("Last-Event-ID must be a stream event id (a non-negative integer)")
        })?),
        None => None,
    };
    let user = who.as_ref().map(|p| p.subject.as_str());
    // Counted until the stream is dropped (the client hangs up or the server stops).
    let permit = l.0.streams.open(user, ip.map(|axum::Extension(i)| i.0))?;
    let mut sub = l.subscribe(&id, last).await?;
    if sub.finished {
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let retry = SseEvent::default().retry(l.config().retry);
    let mut queue: VecDeque<SseEvent> = VecDeque::from([retry]);
    queue.extend(std::mem::take(&mut sub.replay).iter().map(sse_of));
    let rx = sub.rx.take();
    let st = FeedState {
        queue,
        rx,
        _sub: sub,
        _permit: permit,
        shutdown: l.0.shutdown.clone(),
    };
    let stream = futures::stream::unfold(st, next_frame);
    let mut resp = Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(l.config().keepalive))
        .into_response();
    // Proxies such as nginx must not buffer the feed.
    resp.headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(resp)
}

struct FeedState {
    queue: VecDeque<SseEvent>,
    rx: Option<tokio::sync::mpsc::Receiver<Frame>>,
    _sub: Subscription,
    _permit: mercato_kernel::streams::StreamPermit,
    shutdown: mercato_kernel::shutdown::Shutdown,
}

fn sse_of(f: &Frame) -> SseEvent {
    match f {
        Frame::Event(e) => SseEvent::default()
            .id(e.seq.to_string())
            .event(e.kind.as_str())
            .data(&*e.data),
        Frame::Gap { missed, last_seq } => SseEvent::default()
            .id(last_seq.to_string())
            .event("gap")
            .data(serde_json::json!({"missed": missed, "last_event_id": last_seq}).to_string()),
        Frame::Viewers(n) => SseEvent::default()
            .event("viewers")
            .data(serde_json::json!({"viewers": n}).to_string()),
    }
}

async fn next_frame(mut st: FeedState) -> Option<(Result<SseEvent, Infallible>, FeedState)> {
    if let Some(ev) = st.queue.pop_front() {
        return Some((Ok(ev), st));
    }
    let rx = st.rx.as_mut()?;
    let frame = tokio::select! {
        f = rx.recv() => f?,
        _ = st.shutdown.wait() => return None,
    };
    Some((Ok(sse_of(&frame)), st))
}
