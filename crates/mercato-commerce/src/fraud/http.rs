//! Admin routes for fraud (API.md "Fraud"). Every route is for admins; the role is checked
//! with the request's head, before any body is read, so others get 403 whatever they send.

use super::model::{BlockEntry, Rule, RulePatch};
use super::service::{ModelView, Review, Stats};
use crate::AppState;
use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use mercato_kernel::auth::{Admins, Authorized};
use mercato_kernel::error::{ApiError, Problem};
use mercato_kernel::http::{ApiQuery, DeferredJson, created};
use mercato_kernel::pagination::{Page, PageQuery};
use serde::{Deserialize, Serialize};
use utoipa_axum::{router::OpenApiRouter, routes};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rules))
        .routes(routes!(update_rule))
        .routes(routes!(list_blocklist, add_block))
        .routes(routes!(remove_block))
        .routes(routes!(list_reviews))
        .routes(routes!(get_review))
        .routes(routes!(approve_review))
        .routes(routes!(reject_review))
        .routes(routes!(stats))
        .routes(routes!(get_model))
        .routes(routes!(train_model))
}

fn valid(prefix: &str, raw: &str) -> Result<(), ApiError> {
    if mercato_kernel::id::is_valid(prefix, raw) {
        Ok(())
    } else {
        Err(ApiError::not_found())
    }
}

#[derive(Serialize, utoipa::ToSchema)]
pub struct RuleList {
    /// Every rule, in evaluation order.
    pub data: Vec<Rule>,
}

/// The rules in evaluation order, each with `enabled`, `action` and `thresholds`.
#[utoipa::path(get, path = "/admin/fraud/rules", tag = "fraud",
    responses((status = 200, body = RuleList), (status = 403, body = Problem)), security(("bearer" = [])))]
async fn list_rules(State(s): State<AppState>, _p: Authorized<Admins>) -> Json<RuleList> {
    Json(RuleList {
        data: s.fraud.rules(),
    })
}

/// Change a rule: `enabled`, `action` (`block`|`flag`), `thresholds` (the rule's own keys).
/// A bad configuration is 422 with the field and changes nothing.
#[utoipa::path(put, path = "/admin/fraud/rules/{name}", tag = "fraud", params(("name" = String, Path)),
    request_body = RulePatch,
    responses((status = 200, body = Rule), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn update_rule(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(name): Path<String>,
    body: DeferredJson<RulePatch>,
) -> Result<Json<Rule>, ApiError> {
    if super::model::RuleName::parse(&name).is_none() {
        return Err(ApiError::not_found());
    }
    let patch = body.parse()?;
    Ok(Json(s.fraud.update_rule(&name, patch).await?))
}

/// Blocklist entries, newest first.
#[utoipa::path(get, path = "/admin/fraud/blocklist", tag = "fraud", params(PageQuery),
    responses((status = 200, body = Page<BlockEntry>), (status = 403, body = Problem)), security(("bearer" = [])))]
async fn list_blocklist(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<PageQuery>,
) -> Result<Json<Page<BlockEntry>>, ApiError> {
    let page = q.parse::<(i64, String)>()?;
    let rows = s.fraud.blocklist(page.after, page.limit).await?;
    Ok(Json(Page::from_rows(rows, page.limit, |e| {
        (e.created_at.as_micros(), e.id.clone())
    })))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BlockInput {
    /// `email`, `card_fingerprint`, `ip` or `device_id`.
    pub kind: String,
    pub value: String,
    pub reason: Option<String>,
}

/// Put an email, card fingerprint, IP or device id on the blocklist (409 when listed).
#[utoipa::path(post, path = "/admin/fraud/blocklist", tag = "fraud", request_body = BlockInput,
    responses((status = 201, body = BlockEntry), (status = 403, body = Problem), (status = 409, body = Problem),
              (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn add_block(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    body: DeferredJson<BlockInput>,
) -> Result<impl IntoResponse, ApiError> {
    let b = body.parse()?;
    Ok(created(
        s.fraud.add_block(&p, &b.kind, &b.value, b.reason).await?,
    ))
}

/// Take an entry off the blocklist.
#[utoipa::path(delete, path = "/admin/fraud/blocklist/{id}", tag = "fraud", params(("id" = String, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn remove_block(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    valid(super::model::BlockEntryId::PREFIX, &id)?;
    s.fraud.remove_block(&p, &id).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReviewQuery {
    #[param(pattern = "^(open|approved|rejected)$")]
    pub status: Option<String>,
    #[param(value_type = Option<u32>, minimum = 1, maximum = 100)]
    pub limit: Option<String>,
    pub cursor: Option<String>,
}

/// The review queue, oldest first (`status=open` for what still needs a decision).
#[utoipa::path(get, path = "/admin/fraud/reviews", tag = "fraud", params(ReviewQuery),
    responses((status = 200, body = Page<Review>), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn list_reviews(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    ApiQuery(q): ApiQuery<ReviewQuery>,
) -> Result<Json<Page<Review>>, ApiError> {
    if let Some(st) = q.status.as_deref()
        && !matches!(st, "open" | "approved" | "rejected")
    {
        return Err(ApiError::invalid(
            "status",
            "status must be open, approved or rejected",
        ));
    }
    let page = PageQuery {
        limit: q.limit,
        cursor: q.cursor,
    }
    .parse::<(i64, String)>()?;
    let rows = s
        .fraud
        .reviews(q.status.as_deref(), page.after, page.limit)
        .await?;
    Ok(Json(Page::from_rows(rows, page.limit, |r| {
        (r.created_at.as_micros(), r.id.clone())
    })))
}

#[utoipa::path(get, path = "/admin/fraud/reviews/{id}", tag = "fraud", params(("id" = String, Path)),
    responses((status = 200, body = Review), (status = 403, body = Problem), (status = 404, body = Problem)),
    security(("bearer" = [])))]
async fn get_review(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<Review>, ApiError> {
    valid(super::model::ReviewId::PREFIX, &id)?;
    Ok(Json(s.fraud.review(&id).await?))
}

/// Approve: the order's hold is released and it may be fulfilled (409 `review_decided` when
/// it was rejected).
#[utoipa::path(post, path = "/admin/fraud/reviews/{id}/approve", tag = "fraud", params(("id" = String, Path)),
    responses((status = 200, body = Review), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem)),
    security(("bearer" = [])))]
async fn approve_review(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
) -> Result<Json<Review>, ApiError> {
    valid(super::model::ReviewId::PREFIX, &id)?;
    Ok(Json(s.fraud.approve(&p, &id).await?))
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RejectBody {
    pub reason: String,
}

/// Reject as fraud: the order is cancelled and refunded in full, exactly once (409
/// `review_decided` when it was approved).
#[utoipa::path(post, path = "/admin/fraud/reviews/{id}/reject", tag = "fraud", params(("id" = String, Path)),
    request_body = RejectBody,
    responses((status = 200, body = Review), (status = 403, body = Problem), (status = 404, body = Problem),
              (status = 409, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn reject_review(
    State(s): State<AppState>,
    p: Authorized<Admins>,
    Path(id): Path<String>,
    body: DeferredJson<RejectBody>,
) -> Result<Json<Review>, ApiError> {
    valid(super::model::ReviewId::PREFIX, &id)?;
    s.fraud.review(&id).await?;
    let b = body.parse()?;
    Ok(Json(s.fraud.reject(&p, &id, &b.reason).await?))
}

/// Decisions of the last 90 days per verdict, per rule flags/blocks and their false-positive
/// rate (flags and blocks later labelled legitimate), and reviews by status.
#[utoipa::path(get, path = "/admin/fraud/stats", tag = "fraud",
    responses((status = 200, body = Stats), (status = 403, body = Problem)), security(("bearer" = [])))]
async fn stats(State(s): State<AppState>, _p: Authorized<Admins>) -> Result<Json<Stats>, ApiError> {
    Ok(Json(s.fraud.stats().await?))
}

/// The serving model: version, when trained, on how many samples, held-out metrics.
#[utoipa::path(get, path = "/admin/fraud/model", tag = "fraud",
    responses((status = 200, body = ModelView), (status = 403, body = Problem)), security(("bearer" = [])))]
async fn get_model(State(s): State<AppState>, _p: Authorized<Admins>) -> Json<ModelView> {
    Json(s.fraud.model_view())
}

/// Train a new model from the labelled outcomes now. 422 `model_training_failed` when it
/// cannot (too few labels, one class, worse than the serving model): the old one keeps serving.
#[utoipa::path(post, path = "/admin/fraud/model/train", tag = "fraud",
    responses((status = 201, body = ModelView), (status = 403, body = Problem), (status = 422, body = Problem)),
    security(("bearer" = [])))]
async fn train_model(
    State(s): State<AppState>,
    _p: Authorized<Admins>,
) -> Result<impl IntoResponse, ApiError> {
    Ok(created(s.fraud.train().await?))
}
