//! The parts of the OpenAPI document every route shares, added once to the assembled document
//! instead of by hand on each handler.
//!
//! [`StandardResponses`] walks every operation and
//! - serves every error response (4xx/5xx) as `application/problem+json`, the content type
//!   the server really answers errors with ([`crate::error::ApiError`]);
//! - adds the standard error responses an operation can give because of what it takes, each a
//!   reference to one response component whose body is the `Problem` schema: 400/422 when it
//!   takes a body or a query string, 413/415 for a JSON body, 404 when its path has an id,
//!   401/403 everywhere (secured routes need a token and a role; on public routes an invalid
//!   token is refused and a suspended account is forbidden), 429 and 503 everywhere;
//! - gives the `Idempotency-Key` header, where a handler declares it (the routes that require
//!   it), the key's syntax; every unsafe operation documents the idempotency errors (400
//!   malformed key, 409 key in flight, 422 key reused with another request). The header is
//!   accepted on every unsafe route (API.md "Idempotency") but declared only where required,
//!   so generated clients and fuzzers do not send one shared key to unrelated requests.

use utoipa::Modify;
use utoipa::openapi::content::ContentBuilder;
use utoipa::openapi::path::{Operation, Parameter, ParameterBuilder, ParameterIn, PathItem};
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{ObjectBuilder, Type};
use utoipa::openapi::{Content, OpenApi, Ref, RefOr, Required};

/// The content type of every error answer (RFC 9457).
pub const PROBLEM_JSON: &str = "application/problem+json";
/// The header that makes an unsafe request idempotent (API.md "Idempotency").
pub const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The shared error responses: (status, component name, description).
const STANDARD: &[(u16, &str, &str)] = &[
    (
        400,
        "BadRequest",
        "Malformed request: JSON that does not parse, a query string that cannot be parsed, \
         a bad cursor or a malformed Idempotency-Key.",
    ),
    (
        401,
        "Unauthorized",
        "No, an invalid or an expired token (a token that is sent is checked on every route).",
    ),
    (
        403,
        "Forbidden",
        "The role or ownership does not allow it, or the account is suspended.",
    ),
    (
        404,
        "NotFound",
        "No such resource (or not visible to the caller).",
    ),
    (
        409,
        "Conflict",
        "The resource's state does not allow it, or the same Idempotency-Key is still in flight.",
    ),
    (413, "PayloadTooLarge", "The body is larger than the limit."),
    (
        415,
        "UnsupportedMediaType",
        "The body is not sent as `application/json`.",
    ),
    (
        422,
        "Unprocessable",
        "Validation failed (`errors` lists the fields), or an Idempotency-Key was reused with \
         another request.",
    ),
    (
        429,
        "TooManyRequests",
        "Rate limited (`Retry-After` says when to retry).",
    ),
    (
        503,
        "Unavailable",
        "Overloaded, timed out or a dependency is down (`Retry-After`).",
    ),
];

/// See the module docs.
pub struct StandardResponses;

impl Modify for StandardResponses {
    fn modify(&self, openapi: &mut OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        for (_, name, description) in STANDARD {
            components
                .responses
                .insert((*name).to_owned(), RefOr::T(problem_response(description)));
        }
        for (path, item) in openapi.paths.paths.iter_mut() {
            let path = path.clone();
            for (method, op) in operations(item) {
                complete(op, method, &path);
            }
        }
    }
}

fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(PROBLEM_JSON, problem_content())
        .build()
}

fn problem_content() -> Content {
    ContentBuilder::new()
        .schema(Some(Ref::from_schema_name("Problem")))
        .build()
}

fn operations(item: &mut PathItem) -> Vec<(&'static str, &mut Operation)> {
    let PathItem {
        get,
        put,
        post,
        delete,
        patch,
        ..
    } = item;
    [
        ("get", get),
        ("put", put),
        ("post", post),
        ("delete", delete),
        ("patch", patch),
    ]
    .into_iter()
    .filter_map(|(m, op)| op.as_mut().map(|op| (m, op)))
    .collect()
}

fn complete(op: &mut Operation, method: &str, path: &str) {
    // Errors the handler documented itself keep their description, with the real content type.
    for (status, response) in op.responses.responses.iter_mut() {
        let is_error = status.starts_with('4') || status.starts_with('5');
        if let (true, RefOr::T(r)) = (is_error, response) {
            let schema = r
                .content
                .shift_remove("application/json")
                .and_then(|c| c.schema);
            if schema.is_some() || !r.content.contains_key(PROBLEM_JSON) {
                r.content.insert(PROBLEM_JSON.to_owned(), problem_content());
            }
        }
    }

    let params = op.parameters.get_or_insert_with(Vec::new);
    let unsafe_method = matches!(method, "post" | "put" | "patch" | "delete");
    if unsafe_method
        && let Some(p) = params
            .iter_mut()
            .find(|p| p.parameter_in == ParameterIn::Header && p.name == IDEMPOTENCY_KEY)
    {
        let required = p.required.clone();
        *p = idempotency_key(required);
    }
    let has_query = params.iter().any(|p| p.parameter_in == ParameterIn::Query);
    let has_path_param =
        params.iter().any(|p| p.parameter_in == ParameterIn::Path) || path.contains('{');
    let body = op.request_body.as_ref();
    let has_body = body.is_some();
    let json_body = body.is_some_and(|b| b.content.keys().any(|k| k.contains("json")));

    let mut wanted: Vec<u16> = vec![401, 403, 429, 503];
    if has_body || has_query || unsafe_method {
        wanted.extend([400, 422]);
    }
    if has_body {
        wanted.push(413);
    }
    if json_body {
        wanted.push(415);
    }
    if has_path_param {
        wanted.push(404);
    }
    if unsafe_method {
        wanted.push(409);
    }
    for status in wanted {
        let key = status.to_string();
        if op.responses.responses.contains_key(&key) {
            continue;
        }
        if let Some((_, name, _)) = STANDARD.iter().find(|(s, _, _)| *s == status) {
            op.responses.responses.insert(
                key,
                RefOr::Ref(Ref::new(format!("#/components/responses/{name}"))),
            );
        }
    }
}

fn idempotency_key(required: Required) -> Parameter {
    let description = if required == Required::True {
        "Required: the same key with the same body replays the first answer and never acts twice."
    } else {
        "Optional: the same key with the same body replays the first answer and never acts twice."
    };
    ParameterBuilder::new()
        .name(IDEMPOTENCY_KEY)
        .parameter_in(ParameterIn::Header)
        .required(required)
        .description(Some(description))
        .schema(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .max_length(Some(255))
                .pattern(Some("^[!-~]+$")),
        ))
        .build()
}
