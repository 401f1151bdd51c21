//! Events of the webhooks system (payload types; see the crate docs).

use crate::payload;
use serde::{Deserialize, Serialize};

/// `webhook.endpoint_disabled`: an endpoint failed every delivery attempt for the configured
/// time (3 days by default) and was disabled; admins are notified.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointDisabled {
    pub endpoint_id: String,
    pub url: String,
    /// Why: `failing` (the only automatic reason).
    pub reason: String,
    /// When the endpoint started failing (first failure after its last success).
    pub failing_since: mercato_kernel::Timestamp,
}
payload!(
    EndpointDisabled,
    "webhook.endpoint_disabled",
    "webhook_endpoint",
    endpoint_id
);

/// `webhook.test`: sent by `POST /admin/webhooks/{id}/test` to that endpoint only (never on
/// the bus, so not in the registry).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WebhookTest {
    pub endpoint_id: String,
    pub message: String,
}
payload!(WebhookTest, "webhook.test", "webhook_endpoint", endpoint_id);
