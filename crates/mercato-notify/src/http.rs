//! Notification routes: parse → call the service → map to a response. No business logic here.
//!
//! Producers (`POST /notifications`, bulk, templates preview) are API keys with role `service`
//! or admins; templates and operations are admin-only; a person sees only their own inbox,
//! preferences and devices.

use crate::model::{Channel, DeliveryStatus, Preferences, Priority};
use crate::service::{
    Accepted, BulkAccepted, BulkRecipient, DeliveryView, Device, InboxItem, NotificationView,
    Notifier, PreviewItem, Recipient, SendRequest, TemplateInput, TemplateVariant, TemplateView,
    WebhookOutcome,
};
use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::{Admins, AdminsOrServices, Authorized};
use mercato_kernel::auth::{Principal, Role};
use mercato_kernel::error::{ApiError, Code, Problem};
use mercato_kernel::http::{ApiJson, ApiQuery};
use mercato_kernel::idempotency::{Idempotency, ReplayWriter, json_response};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::time::Duration;
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<Notifier> {
    OpenApiRouter::new()
        .routes(routes!(send))
        .routes(routes!(send_bulk))
        .routes(routes!(get_notification))
        .routes(routes!(get_template, create_template, put_template))
        .routes(routes!(preview_template))
        .routes(routes!(get_preferences, put_preferences))
        .routes(routes!(inbox))
        .routes(routes!(inbox_read))
        .routes(routes!(inbox_read_all))
        .routes(routes!(inbox_unread_count))
        .routes(routes!(inbox_stream))
        .routes(routes!(list_devices, register_device))
        .routes(routes!(delete_device))
        .routes(routes!(provider_webhook))
        .routes(routes!(dead_letters))
        .routes(routes!(redrive))
        .routes(routes!(stats))
}

fn producer(p: &Principal) -> Result<&str, ApiError> {
    p.require(&[Role::Admin, Role::Service])?;
    Ok(p.subject.as_str())
}

fn person(p: &Principal) -> Result<&str, ApiError> {
    p.user_id().ok_or_else(|| {
        ApiError::forbidden().detail("only people have an inbox, preferences and devices")
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NotificationRequest {
    pub user_id: Option<String>,
    pub recipient: Option<Recipient>,
    /// A registered type, e.g. `order_confirmed`.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Requested channels (default: the type's).
    pub channels: Option<Vec<Channel>>,
    /// Template name (default: the type's name).
    pub template: Option<String>,
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    pub priority: Option<Priority>,
    /// Same request_id → the original notification, nothing sent again.
    pub request_id: Option<String>,
    /// Never sent after this instant.
    pub expires_at: Option<Timestamp>,
    /// Overrides the type's dedup window; 0 turns type-level dedup off.
    pub dedup_window_secs: Option<u64>,
    pub locale: Option<String>,
}

impl From<NotificationRequest> for SendRequest {
    fn from(r: NotificationRequest) -> SendRequest {
        SendRequest {
            user_id: r.user_id,
            recipient: r.recipient,
            type_name: r.type_name,
            channels: r.channels.unwrap_or_default(),
            template: r.template,
            data: r.data.unwrap_or_else(|| serde_json::json!({})),
            priority: r.priority,
            request_id: r.request_id,
            expires_at: r.expires_at,
            dedup_window_secs: r.dedup_window_secs,
            locale: r.locale,
        }
    }
}

/// Send a notification (service or admin). Answers 202 with one delivery per channel, or
/// `status: "suppressed"` with the reason when no channel will deliver.
#[utoipa::path(post, path = "/notifications", tag = "notifications", request_body = NotificationRequest,
    responses((status = 202, body = Accepted), (status = 422, body = Problem), (status = 403, body = Problem)),
    security(("bearer" = [])))]
async fn send(
    State(n): State<Notifier>,
    p: Authorized<AdminsOrServices>,
    idem: Idempotency,
    ApiJson(req): ApiJson<NotificationRequest>,
) -> Result<Response, ApiError> {
    let producer = producer(&p)?;
    let replay = ReplayWriter {
        idem: &idem,
        status: StatusCode::ACCEPTED,
    };
    let (answer, body) = n.accept(producer, req.into(), Some(replay)).await?;
    Ok(match body {
        Some(b) => json_response(StatusCode::ACCEPTED, b),
        None => (StatusCode::ACCEPTED, Json(answer)).into_response(),
    })
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BulkRequest {
    #[serde(rename = "type")]
    pub type_name: String,
    pub template: Option<String>,
    /// Shared data; each recipient's `data` is merged over it.
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    /// 1..=10000 recipients.
    pub recipients: Vec<BulkRecipient>,
    pub priority: Option<Priority>,
    pub channels: Option<Vec<Channel>>,
    pub expires_at: Option<Timestamp>,
    pub dedup_window_secs: Option<u64>,
    pub locale: Option<String>,
}

/// Send one notification to many recipients (service or admin). Failures are per recipient.
#[utoipa::path(post, path = "/notifications/bulk", tag = "notifications", request_body = BulkRequest,
    responses((status = 202, body = BulkAccepted), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn send_bulk(
    State(n): State<Notifier>,
    p: Authorized<AdminsOrServices>,
    ApiJson(req): ApiJson<BulkRequest>,
) -> Result<Response, ApiError> {
    let producer = producer(&p)?;
    let shared = SendRequest {
        type_name: req.type_name,
        channels: req.channels.unwrap_or_default(),
        template: req.template,
        data: req.data.unwrap_or_else(|| serde_json::json!({})),
        priority: req.priority,
        expires_at: req.expires_at,
        dedup_window_secs: req.dedup_window_secs,
        locale: req.locale,
        ..SendRequest::default()
    };
    let answer = n.bulk(producer, shared, req.recipients).await?;
    Ok((StatusCode::ACCEPTED, Json(answer)).into_response())
}

/// A notification with the status of every delivery (producers; a person sees their own).
#[utoipa::path(get, path = "/notifications/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = NotificationView), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_notification(
    State(n): State<Notifier>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<NotificationView>, ApiError> {
    if crate::model::NotificationId::parse(&id).is_none() {
        return Err(ApiError::not_found());
    }
    let view = n.notification(&id).await?;
    let allowed = matches!(p.role, Role::Admin | Role::Service)
        || (p.user_id().is_some() && p.user_id() == view.user_id.as_deref());
    if !allowed {
        return Err(ApiError::not_found());
    }
    Ok(Json(view))
}

fn template_name(name: &str) -> Result<(), ApiError> {
    if crate::model::is_valid_type_name(name) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

/// A template: stored variants per channel and locale, and the built-ins they override.
#[utoipa::path(get, path = "/notification-templates/{name}", tag = "notifications", params(("name" = String, Path)),
    responses((status = 200, body = TemplateView), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn get_template(
    State(n): State<Notifier>,
    _p: Authorized<AdminsOrServices>,
    Path(name): Path<String>,
) -> Result<Json<TemplateView>, ApiError> {
    template_name(&name)?;
    Ok(Json(n.template(&name).await?))
}

/// Create a template variant (admin). 409 when the channel/locale variant exists; 422
/// `template_invalid` with the line for a template that does not compile or uses an unknown
/// variable.
#[utoipa::path(post, path = "/notification-templates/{name}", tag = "notifications", params(("name" = String, Path)),
    request_body = TemplateInput,
    responses((status = 201, body = TemplateVariant), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn create_template(
    State(n): State<Notifier>,
    p: Authorized<Admins>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Response, ApiError> {
    template_name(&name)?;
    let v = n.save_template(&p.subject, &name, input, true).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Create or replace a template variant (admin); `version` guards against lost updates.
#[utoipa::path(put, path = "/notification-templates/{name}", tag = "notifications", params(("name" = String, Path)),
    request_body = TemplateInput,
    responses((status = 200, body = TemplateVariant), (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn put_template(
    State(n): State<Notifier>,
    p: Authorized<Admins>,
    Path(name): Path<String>,
    ApiJson(input): ApiJson<TemplateInput>,
) -> Result<Json<TemplateVariant>, ApiError> {
    template_name(&name)?;
    Ok(Json(
        n.save_template(&p.subject, &name, input, false).await?,
    ))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PreviewRequest {
    #[schema(value_type = Object)]
    pub data: Option<serde_json::Value>,
    /// Default: every channel with a template.
    pub channels: Option<Vec<Channel>>,
    pub locale: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct PreviewList {
    pub data: Vec<PreviewItem>,
}

/// Render a template with data, without sending anything.
#[utoipa::path(post, path = "/notification-templates/{name}/preview", tag = "notifications",
    params(("name" = String, Path)), request_body = PreviewRequest,
    responses((status = 200, body = PreviewList), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn preview_template(
    State(n): State<Notifier>,
    _p: Authorized<AdminsOrServices>,
    Path(name): Path<String>,
    ApiJson(req): ApiJson<PreviewRequest>,
) -> Result<Json<PreviewList>, ApiError> {
    template_name(&name)?;
    let data = n
        .preview(
            &name,
            req.data.unwrap_or_else(|| serde_json::json!({})),
            req.channels.unwrap_or_default(),
            req.locale,
        )
        .await?;
    Ok(Json(PreviewList { data }))
}

/// The signed-in user's notification preferences (defaults when never set).
#[utoipa::path(get, path = "/me/notification-preferences", tag = "notifications",
    responses((status = 200, body = Preferences)), security(("bearer" = [])))]
async fn get_preferences(
    State(n): State<Notifier>,
    p: Principal,
) -> Result<Json<Preferences>, ApiError> {
    Ok(Json(n.preferences(person(&p)?).await?))
}

/// Replace the signed-in user's notification preferences.
#[utoipa::path(put, path = "/me/notification-preferences", tag = "notifications", request_body = Preferences,
    responses((status = 200, body = Preferences), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn put_preferences(
    State(n): State<Notifier>,
    p: Principal,
    ApiJson(prefs): ApiJson<Preferences>,
) -> Result<Json<Preferences>, ApiError> {
    Ok(Json(n.set_preferences(person(&p)?, prefs).await?))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct InboxQuery {
    /// `true` (or `1`) for unread items only.
    #[param(pattern = "^(true|false|1|0)$")]
    pub unread: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The signed-in user's in-app inbox, newest first.
#[utoipa::path(get, path = "/me/inbox", tag = "notifications", params(InboxQuery),
    responses((status = 200, body = Page<InboxItem>)), security(("bearer" = [])))]
async fn inbox(
    State(n): State<Notifier>,
    p: Principal,
    ApiQuery(q): ApiQuery<InboxQuery>,
) -> Result<Json<Page<InboxItem>>, ApiError> {
    let user = person(&p)?;
    let unread = match q.unread.as_deref() {
        None | Some("false") | Some("0") => false,
        Some("true") | Some("1") => true,
        Some(_) => return Err(ApiError::invalid("unread", "true or false")),
    };
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<i64>()?;
    let rows = n.inbox(user, unread, page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |i| i.seq)))
}

/// Mark one inbox item read.
#[utoipa::path(post, path = "/me/inbox/{id}/read", tag = "notifications", params(("id" = String, Path)),
    responses((status = 200, body = InboxItem), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn inbox_read(
    State(n): State<Notifier>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<Json<InboxItem>, ApiError> {
    let user = person(&p)?;
    if crate::model::InboxItemId::parse(&id).is_none() {
        return Err(ApiError::not_found());
    }
    Ok(Json(n.mark_read(user, &id).await?))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ReadAll {
    /// Items that were unread.
    pub updated: u64,
}

/// Mark every inbox item read.
#[utoipa::path(post, path = "/me/inbox/read-all", tag = "notifications",
    responses((status = 200, body = ReadAll)), security(("bearer" = [])))]
async fn inbox_read_all(
    State(n): State<Notifier>,
    p: Principal,
) -> Result<Json<ReadAll>, ApiError> {
    let user = person(&p)?;
    Ok(Json(ReadAll {
        updated: n.read_all(user).await?,
    }))
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct UnreadCount {
    pub unread: i64,
}

/// How many inbox items are unread.
#[utoipa::path(get, path = "/me/inbox/unread-count", tag = "notifications",
    responses((status = 200, body = UnreadCount)), security(("bearer" = [])))]
async fn inbox_unread_count(
    State(n): State<Notifier>,
    p: Principal,
) -> Result<Json<UnreadCount>, ApiError> {
    let user = person(&p)?;
    Ok(Json(UnreadCount {
        unread: n.unread_count(user).await?,
    }))
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StreamQuery {
    /// Same as the `Last-Event-ID` header (for clients that cannot set headers); the header wins.
    pub last_event_id: Option<String>,
}

/// Server-sent events: every new inbox item as an `event: notification` with `id: <seq>`.
/// `Last-Event-ID` replays the items after that sequence number first.
#[utoipa::path(get, path = "/me/inbox/stream", tag = "notifications", params(StreamQuery),
    responses((status = 200, content_type = "text/event-stream", body = String), (status = 400, body = Problem)),
    security(("bearer" = [])))]
async fn inbox_stream(
    State(n): State<Notifier>,
    p: Principal,
    ip: Option<axum::Extension<mercato_kernel::http::ClientIp>>,
    headers: HeaderMap,
    ApiQuery(q): ApiQuery<StreamQuery>,
) -> Result<Response, ApiError> {
    let user = person(&p)?.to_owned();
    // Counted until the stream is dropped (the client hangs up or the server stops).
    let permit = n
        .inner
        .streams
        .open(Some(&user), ip.map(|axum::Extension(i)| i.0))?;
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .or(q.last_event_id);
    // Subscribe before reading the head, so nothing added in between is missed.
    let rx = n.hub().subscribe(&user);
    let cursor = match last {
        Some(s) => s
            .trim()
            .parse::<i64>()
            .ok()
            .filter(|v| *v >= 0)
            .ok_or_else(|| {
                ApiError::new(Code::BadRequest).detail(
                    "Last-Event-ID must be an inbox sequence number (a non-negative integer)",
                )
            })?,
        None => n.store().inbox_head(&user).await?,
    };
    let state = StreamState {
        shutdown: n.inner.shutdown.clone(),
        n,
        user,
        cursor,
        rx,
        buf: VecDeque::new(),
        _permit: permit,
    };
    let stream = futures::stream::unfold(state, next_event);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response())
}

struct StreamState {
    _permit: mercato_kernel::streams::StreamPermit,
    n: Notifier,
    user: String,
    cursor: i64,
    rx: tokio::sync::watch::Receiver<u64>,
    buf: VecDeque<InboxItem>,
    shutdown: mercato_kernel::shutdown::Shutdown,
}

async fn next_event(mut st: StreamState) -> Option<(Result<SseEvent, Infallible>, StreamState)> {
    loop {
        if let Some(item) = st.buf.pop_front() {
            st.cursor = item.seq;
            let ev = SseEvent::default()
                .id(item.seq.to_string())
                .event("notification");
            let ev = match ev.clone().json_data(&item) {
                Ok(e) => e,
                Err(_) => ev.data("{}"),
            };
            return Some((Ok(ev), st));
        }
        st.rx.borrow_and_update();
        match st.n.store().inbox_since(&st.user, st.cursor, 100).await {
            Ok(rows) if !rows.is_empty() => {
                st.buf.extend(rows.into_iter().map(InboxItem::from));
                continue;
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "reading the inbox for a stream failed"),
        }
        // Woken by a new item in this process, or poll (items written by other processes).
        tokio::select! {
            changed = st.rx.changed() => {
                if changed.is_err() {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            _ = st.shutdown.wait() => return None,
        }
    }
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeviceRequest {
    /// `ios`, `android` or `web`.
    #[schema(pattern = "^(ios|android|web)$")]
    pub platform: String,
    /// 1-4096 visible ASCII characters.
    #[schema(pattern = "^[!-~]{1,4096}$")]
    pub token: String,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct DeviceList {
    pub data: Vec<Device>,
}

/// Register a push device for the signed-in user (a known token is moved and reactivated).
#[utoipa::path(post, path = "/me/devices", tag = "notifications", request_body = DeviceRequest,
    responses((status = 201, body = Device), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn register_device(
    State(n): State<Notifier>,
    p: Principal,
    ApiJson(req): ApiJson<DeviceRequest>,
) -> Result<Response, ApiError> {
    let user = person(&p)?;
    let d = n.register_device(user, &req.platform, &req.token).await?;
    Ok((StatusCode::CREATED, Json(d)).into_response())
}

/// The signed-in user's push devices (inactive ones show why).
#[utoipa::path(get, path = "/me/devices", tag = "notifications",
    responses((status = 200, body = DeviceList)), security(("bearer" = [])))]
async fn list_devices(
    State(n): State<Notifier>,
    p: Principal,
) -> Result<Json<DeviceList>, ApiError> {
    let user = person(&p)?;
    Ok(Json(DeviceList {
        data: n.devices(user).await?,
    }))
}

/// Remove a push device.
#[utoipa::path(delete, path = "/me/devices/{id}", tag = "notifications", params(("id" = String, Path)),
    responses((status = 204), (status = 404, body = Problem)), security(("bearer" = [])))]
async fn delete_device(
    State(n): State<Notifier>,
    p: Principal,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let user = person(&p)?;
    if crate::model::DeviceId::parse(&id).is_none() {
        return Err(ApiError::not_found());
    }
    n.delete_device(user, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Provider callback: `delivered`, `opened`, `bounced`, `unregistered`. Signed with
/// `Mercato-Signature: t=…,v1=…` (HMAC-SHA256 of `t.body`, 5-minute tolerance); an unknown
/// provider or a forged signature is 400 and changes nothing.
#[utoipa::path(post, path = "/webhooks/notifications/{provider}", tag = "notifications",
    params(("provider" = String, Path)), request_body = crate::service::ProviderEvent,
    responses((status = 200, body = WebhookOutcome), (status = 400, body = Problem)))]
async fn provider_webhook(
    State(n): State<Notifier>,
    Path(provider): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<WebhookOutcome>, ApiError> {
    let sig = headers
        .get(crate::webhook::HEADER)
        .and_then(|v| v.to_str().ok());
    Ok(Json(n.provider_callback(&provider, sig, &body).await?))
}

/// Dead deliveries, most recent first (admin).
#[utoipa::path(get, path = "/admin/notifications/dead-letters", tag = "notifications", params(PageQuery),
    responses((status = 200, body = Page<DeliveryView>)), security(("bearer" = [])))]
async fn dead_letters(
    State(n): State<Notifier>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<DeliveryView>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = n.dead_letters(page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |d| {
        (d.updated_at.as_micros(), d.id.clone())
    })))
}

/// Put a dead delivery back in its lane (admin): attempts start again from zero.
#[utoipa::path(post, path = "/admin/notifications/dead-letters/{id}/redrive", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 202, body = DeliveryView), (status = 404, body = Problem), (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn redrive(
    State(n): State<Notifier>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if crate::model::DeliveryId::parse(&id).is_none() {
        return Err(ApiError::not_found());
    }
    let d = n.redrive(&p.subject, &id).await?;
    Ok((StatusCode::ACCEPTED, Json(d)).into_response())
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
pub struct StatsQuery {
    /// RFC 3339; default 24 h before `to`.
    #[param(format = DateTime)]
    pub from: Option<String>,
    /// RFC 3339; default now.
    #[param(format = DateTime)]
    pub to: Option<String>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct ChannelStats {
    pub channel: Channel,
    /// Reached the provider (sent, delivered, opened or read).
    pub sent: i64,
    /// Confirmed delivered by the provider (delivered, opened or read).
    pub delivered: i64,
    /// Failed for good (failed or dead).
    pub failed: i64,
    pub dead: i64,
    pub suppressed: i64,
    pub expired: i64,
    /// Waiting or in flight (pending, deferred, processing).
    pub queued: i64,
    /// Accept → provider accepted, over deliveries sent in the range.
    pub p50_ms: f64,
    pub p99_ms: f64,
    #[schema(value_type = Object)]
    pub by_status: BTreeMap<String, i64>,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct LaneDepth {
    pub lane: Priority,
    pub pending: i64,
    pub deferred: i64,
    pub processing: i64,
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct StatsView {
    pub from: Timestamp,
    pub to: Timestamp,
    pub channels: Vec<ChannelStats>,
    /// Current queue depth per priority lane.
    pub queues: Vec<LaneDepth>,
}

/// Delivery statistics per channel over a time range, and queue depth per lane (admin).
#[utoipa::path(get, path = "/admin/notifications/stats", tag = "notifications", params(StatsQuery),
    responses((status = 200, body = StatsView), (status = 422, body = Problem)), security(("bearer" = [])))]
async fn stats(
    State(n): State<Notifier>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<StatsQuery>,
) -> Result<Json<StatsView>, ApiError> {
    let parse = |field: &str, v: &Option<String>| -> Result<Option<Timestamp>, ApiError> {
        match v {
            None => Ok(None),
            Some(s) => Timestamp::parse_rfc3339(s)
                .map(Some)
                .ok_or_else(|| ApiError::invalid(field, "an RFC 3339 timestamp")),
        }
    };
    let to = parse("to", &q.to)?.unwrap_or_else(|| n.now().plus_secs(1));
    let from = parse("from", &q.from)?.unwrap_or(to.plus_secs(-86_400));
    if from >= to {
        return Err(ApiError::invalid("from", "must be before to"));
    }
    let rows = n.store().stats(from, to).await?;
    let mut channels = Vec::new();
    for c in Channel::ALL {
        let by_status: BTreeMap<String, i64> = rows
            .by_status
            .iter()
            .filter(|(ch, _, _)| ch == c.as_str())
            .map(|(_, s, n)| (s.clone(), *n))
            .collect();
        let count = |ss: &[DeliveryStatus]| -> i64 {
            ss.iter()
                .map(|s| by_status.get(s.as_str()).copied().unwrap_or(0))
                .sum()
        };
        use DeliveryStatus as S;
        let mut lat: Vec<i64> = rows
            .latencies
            .iter()
            .filter(|(ch, _)| ch == c.as_str())
            .map(|(_, l)| *l)
            .collect();
        lat.sort_unstable();
        let pct = |p: f64| -> f64 {
            if lat.is_empty() {
                return 0.0;
            }
            let i = ((p / 100.0) * (lat.len() - 1) as f64).round() as usize;
            lat[i.min(lat.len() - 1)] as f64 / 1000.0
        };
        channels.push(ChannelStats {
            channel: c,
            sent: count(&[S::Sent, S::Delivered, S::Opened, S::Read]),
            delivered: count(&[S::Delivered, S::Opened, S::Read]),
            failed: count(&[S::Failed, S::Dead]),
            dead: count(&[S::Dead]),
            suppressed: count(&[S::Suppressed]),
            expired: count(&[S::Expired]),
            queued: count(&[S::Pending, S::Deferred, S::Processing]),
            p50_ms: pct(50.0),
            p99_ms: pct(99.0),
            by_status,
        });
    }
    let queues = Priority::ALL
        .into_iter()
        .map(|lane| {
            let get = |s: &str| {
                rows.queues
                    .iter()
                    .find(|(l, st, _)| l == lane.as_str() && st == s)
                    .map(|(_, _, n)| *n)
                    .unwrap_or(0)
            };
            LaneDepth {
                lane,
                pending: get("pending"),
                deferred: get("deferred"),
                processing: get("processing"),
            }
        })
        .collect();
    Ok(Json(StatsView {
        from,
        to,
        channels,
        queues,
    }))
}
