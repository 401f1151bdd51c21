//! Signed webhook delivery.
//!
//! Every event is POSTed as JSON to the configured URL with
//! `Mercato-Signature: t=<unix secs>,v1=<hex HMAC-SHA256(secret, "<t>.<raw body>")>`. A delivery
//! that fails (connection error or a non-2xx answer) is retried with the kernel's exponential
//! backoff with jitter, up to `webhook_max_attempts`; each attempt is signed afresh with its own
//! timestamp. Deliveries run concurrently, so events may arrive out of order — receivers key on
//! the event id and the charge's state, as with any real gateway.

use crate::Core;
use crate::model::Event;
use crate::state::WebhookAttempt;
use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::Arc;

/// The header carrying the signature.
pub const SIGNATURE_HEADER: &str = "Mercato-Signature";

/// The `Mercato-Signature` value for `body` sent at `timestamp` (unix seconds).
pub fn signature_header(secret: &str, timestamp: i64, body: &[u8]) -> String {
    format!(
        "t={timestamp},v1={}",
        mercato_kernel::id::hex(&sign(secret, timestamp, body))
    )
}

/// HMAC-SHA256(secret, "<timestamp>.<body>").
pub fn sign(secret: &str, timestamp: i64, body: &[u8]) -> Vec<u8> {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret.as_bytes()) else {
        return Vec::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize().into_bytes().to_vec()
}

/// Sends `event` to the webhook target in the background (nothing when none is configured).
pub(crate) fn dispatch(core: &Arc<Core>, event: Event) {
    if core.webhook_target().is_none() {
        return;
    }
    let core = core.clone();
    tokio::spawn(async move { deliver(core, event).await });
}

async fn deliver(core: Arc<Core>, event: Event) {
    let body = match serde_json::to_vec(&event) {
        Ok(b) => b,
        Err(e) => {
            tracing::error!(error = %e, "cannot serialize a gateway event");
            return;
        }
    };
    let mut shutdown = core.shutdown.clone();
    let max_attempts = core.config.webhook_max_attempts.max(1);
    for attempt in 1..=max_attempts {
        // Read the target on every attempt: it may be set after start-up or changed by a test.
        let Some(target) = core.webhook_target() else {
            return;
        };
        let signature = signature_header(&target.secret, crate::now_secs(), &body);
        let send = core
            .http
            .post(&target.url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(SIGNATURE_HEADER, signature)
            .body(body.clone())
            .send();
        let result = tokio::select! {
            r = send => r,
            _ = shutdown.wait() => return,
        };
        let (status, error) = match result {
            Ok(resp) => (Some(resp.status().as_u16()), None),
            Err(e) => (None, Some(e.to_string())),
        };
        let record = WebhookAttempt {
            event_id: event.id.clone(),
            event_type: event.event_type.clone(),
            attempt,
            status,
            error,
        };
        let delivered = record.delivered();
        core.lock().log_webhook_attempt(record);
        if delivered {
            tracing::debug!(event_id = %event.id, attempt, "webhook delivered");
            return;
        }
        if attempt == max_attempts {
            tracing::warn!(event_id = %event.id, attempt, ?status, "webhook delivery gave up");
            return;
        }
        let delay = mercato_kernel::resilience::backoff(
            attempt,
            core.config.webhook_backoff_base,
            core.config.webhook_backoff_max,
        );
        if shutdown.sleep(delay).await {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_matches_a_known_vector() {
        // HMAC-SHA256("whsec_test", "1700000000.{}"), computed independently with openssl:
        // printf '1700000000.{}' | openssl dgst -sha256 -hmac whsec_test
        let h = signature_header("whsec_test", 1_700_000_000, b"{}");
        assert_eq!(
            h,
            "t=1700000000,v1=35495024f4ef3f94e5a93e22221544c4b75e9a42300cd965ab81cb85cd994e91"
        );
    }
}
