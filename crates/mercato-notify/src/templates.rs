//! Templates: minijinja, sandboxed (no loader, no file or network access, a fuel limit against
//! runaway loops, a recursion limit) with strict undefined (a missing variable is an error,
//! never an empty string). Templates are per name × channel × locale; lookup falls back from
//! the requested locale to the default locale, and from stored templates to the built-ins.
//!
//! Validation at save time: the subject and body must compile, and every variable they use must
//! exist in the template's sample data (the built-in sample for built-in names, or the
//! `sample_data` sent with the template); a failure names the line.

use crate::model::Channel;
use minijinja::{Environment, UndefinedBehavior, Value};
use serde_json::json;

/// Output of rendering one template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rendered {
    pub subject: Option<String>,
    pub body: String,
}

/// A template failure with the line (1-based) when known.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}{}: {message}", .line.map(|l| format!(" line {l}")).unwrap_or_default())]
pub struct TemplateError {
    /// `subject` or `body`.
    pub field: &'static str,
    pub line: Option<usize>,
    pub message: String,
}

/// Most instructions a single render may execute (a generous bound; real templates use hundreds).
const FUEL: u64 = 100_000;
/// Longest template source accepted, bytes.
pub const MAX_SOURCE: usize = 64 * 1024;

/// The sandboxed environment every template renders in.
pub fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(Some(FUEL));
    env.set_recursion_limit(50);
    // Plain text (email text parts, SMS, push): nothing to escape.
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    env.add_filter("money", money_filter);
    env
}

fn minor_digits(currency: &str) -> u32 {
    match currency {
        "BIF" | "CLP" | "DJF" | "GNF" | "ISK" | "JPY" | "KMF" | "KRW" | "PYG" | "RWF" | "UGX"
        | "VND" | "VUV" | "XAF" | "XOF" | "XPF" => 0,
        "BHD" | "IQD" | "JOD" | "KWD" | "LYD" | "OMR" | "TND" => 3,
        _ => 2,
    }
}

/// `{{ total | money }}` → `USD 12.34` from `{amount: 1234, currency: "USD"}`.
fn money_filter(v: Value) -> Result<String, minijinja::Error> {
    let bad = || {
        minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            "money expects {amount, currency}",
        )
    };
    let amount = v.get_attr("amount").map_err(|_| bad())?;
    let currency = v.get_attr("currency").map_err(|_| bad())?;
    let amount = i64::try_from(amount).map_err(|_| bad())?;
    let currency = currency.as_str().ok_or_else(bad)?.to_ascii_uppercase();
    let digits = minor_digits(&currency);
    if digits == 0 {
        return Ok(format!("{currency} {amount}"));
    }
    let scale = 10_i64.pow(digits);
    let sign = if amount < 0 { "-" } else { "" };
    let abs = amount.unsigned_abs();
    let scale = scale.unsigned_abs();
    Ok(format!(
        "{currency} {sign}{}.{:0width$}",
        abs / scale,
        abs % scale,
        width = digits as usize
    ))
}

fn error_of(field: &'static str, e: &minijinja::Error) -> TemplateError {
    let message = match e.detail() {
        Some(d) => format!("{}: {d}", e.kind()),
        None => e.kind().to_string(),
    };
    TemplateError {
        field,
        line: e.line(),
        message,
    }
}

/// The line (1-based) of the first use of `name` inside a `{{ }}` or `{% %}` block.
fn line_of_variable(source: &str, name: &str) -> Option<usize> {
    for (i, line) in source.lines().enumerate() {
        let mut rest = line;
        while let Some(pos) = rest.find(name) {
            let before = rest[..pos].chars().next_back();
            let after = rest[pos + name.len()..].chars().next();
            let ident = |c: Option<char>| c.is_some_and(|c| c.is_alphanumeric() || c == '_');
            if !ident(before) && !ident(after) {
                return Some(i + 1);
            }
            rest = &rest[pos + name.len()..];
        }
    }
    None
}

/// Checks one template source: it compiles, and (when `sample` is given) uses only variables
/// present in `sample` and renders with it.
pub fn validate_source(
    env: &Environment<'_>,
    field: &'static str,
    source: &str,
    sample: Option<&serde_json::Value>,
) -> Result<(), TemplateError> {
    if source.len() > MAX_SOURCE {
        return Err(TemplateError {
            field,
            line: None,
            message: format!("longer than {MAX_SOURCE} bytes"),
        });
    }
    let tmpl = env
        .template_from_str(source)
        .map_err(|e| error_of(field, &e))?;
    let Some(sample) = sample else {
        return Ok(());
    };
    let mut unknown: Vec<String> = tmpl
        .undeclared_variables(false)
        .into_iter()
        .filter(|v| sample.get(v).is_none() && env.globals().all(|(g, _)| g != v.as_str()))
        .collect();
    unknown.sort();
    if let Some(name) = unknown.first() {
        return Err(TemplateError {
            field,
            line: line_of_variable(source, name),
            message: format!("unknown variable `{name}`"),
        });
    }
    tmpl.render(sample).map_err(|e| error_of(field, &e))?;
    Ok(())
}

/// Renders `subject` (optional) and `body` with `data`.
pub fn render(
    env: &Environment<'_>,
    subject: Option<&str>,
    body: &str,
    data: &serde_json::Value,
) -> Result<Rendered, TemplateError> {
    let subject = match subject {
        Some(s) => Some(
            env.render_str(s, data)
                .map_err(|e| error_of("subject", &e))?
                .trim()
                .to_owned(),
        ),
        None => None,
    };
    let body = env
        .render_str(body, data)
        .map_err(|e| error_of("body", &e))?;
    Ok(Rendered { subject, body })
}

/// A built-in template text for one type: the subject, a short text (SMS, push, in-app) and a
/// longer email body.
pub struct Builtin {
    pub name: &'static str,
    pub subject: &'static str,
    pub short: &'static str,
    pub email: &'static str,
    /// Sample data: documents the variables and validates overrides of this template.
    pub sample: fn() -> serde_json::Value,
}

impl Builtin {
    /// `(subject, body)` of the built-in template for `channel`.
    pub fn for_channel(&self, channel: Channel) -> (Option<&'static str>, &'static str) {
        match channel {
            Channel::Email => (Some(self.subject), self.email),
            Channel::Sms => (None, self.short),
            Channel::Push | Channel::InApp => (Some(self.subject), self.short),
        }
    }
}

pub const DEFAULT_LOCALE: &str = "en";

/// Built-in templates (locale `en`), one per built-in type.
pub static BUILTINS: &[Builtin] = &[
    Builtin {
        name: "otp",
        subject: "Your Mercato code",
        short: "Your Mercato code is {{ code }}. It expires in {{ minutes }} minutes. Never share it.",
        email: "Your one-time code is {{ code }}.\n\nIt expires in {{ minutes }} minutes. If you did not ask for it, you can ignore this email; never share the code with anyone.\n",
        sample: || json!({"code": "123456", "minutes": 10}),
    },
    Builtin {
        name: "email_verification",
        subject: "Confirm your email address",
        short: "Confirm your email: {{ verify_link }}",
        email: "Please confirm that this is your email address by sending this token to POST /api/v1/auth/verify-email, or opening the link below:\n\n{{ token }}\n\n{{ verify_link }}\n\nIt expires in {{ hours }} hours. If you did not ask for it, ignore this email.\n",
        sample: || {
            json!({"token": "evt_01EXAMPLE", "hours": 24,
                          "verify_link": "/api/v1/auth/verify-email?token=evt_01EXAMPLE"})
        },
    },
    Builtin {
        name: "security_alert",
        subject: "Security alert on your Mercato account",
        short: "Security alert: {{ message }}",
        email: "We noticed something on your account:\n\n{{ message }}\n\nIf this was not you, reset your password now.\n",
        sample: || json!({"message": "a new sign-in from Firefox on Linux"}),
    },
    Builtin {
        name: "order_confirmed",
        subject: "Order {{ order_number }} confirmed",
        short: "Thanks! Order {{ order_number }} is confirmed ({{ total | money }}).",
        email: "Thank you for your order {{ order_number }}.\n\n{% for item in items %}- {{ item.quantity }} x {{ item.name }} ({{ item.sku }})\n{% endfor %}\nTotal: {{ total | money }}\n\nWe will let you know when it ships.\n{% if order_link is defined %}\nYour order: {{ order_link }}\n{% endif %}",
        sample: || {
            json!({"order_id": "ord_01EXAMPLE", "order_number": "M-1001",
                   "total": {"amount": 4999, "currency": "USD"},
                   "items": [{"sku": "TEE-M", "name": "T-shirt", "quantity": 1}],
                   "order_link": "/api/v1/orders/ord_01EXAMPLE?token=gst_EXAMPLE"})
        },
    },
    Builtin {
        name: "payment_failed",
        subject: "Your payment did not go through",
        short: "Your payment of {{ amount | money }} was declined ({{ decline_code }}). Please try another card.",
        email: "We could not take your payment of {{ amount | money }}: the card was declined ({{ decline_code }}).\n\nNothing was charged. You can start a new checkout with another payment method.\n",
        sample: || {
            json!({"payment_id": "pay_01EXAMPLE", "amount": {"amount": 4999, "currency": "USD"},
                   "decline_code": "card_declined"})
        },
    },
    Builtin {
        name: "order_shipped",
        subject: "Order {{ order_number }} has shipped",
        short: "Order {{ order_number }} shipped with {{ carrier }} (tracking {{ tracking_number }}).",
        email: "Good news: order {{ order_number }} is on its way.\n\nCarrier: {{ carrier }}\nTracking number: {{ tracking_number }}\n",
        sample: || {
            json!({"order_id": "ord_01EXAMPLE", "order_number": "M-1001", "carrier": "UPS",
                   "tracking_number": "1Z999AA10123456784"})
        },
    },
    Builtin {
        name: "order_delivered",
        subject: "Order {{ order_number }} was delivered",
        short: "Order {{ order_number }} was delivered. Enjoy!",
        email: "Order {{ order_number }} was delivered.\n\nSomething wrong? You can request a return within 30 days.\n",
        sample: || json!({"order_id": "ord_01EXAMPLE", "order_number": "M-1001"}),
    },
    Builtin {
        name: "refund_issued",
        subject: "Refund for order {{ order_number }}",
        short: "We refunded {{ amount | money }} for order {{ order_number }}.",
        email: "We have refunded {{ amount | money }} for order {{ order_number }}.\n\nIt usually reaches your account within 3 to 5 business days.\n",
        sample: || {
            json!({"order_id": "ord_01EXAMPLE", "order_number": "M-1001",
                   "amount": {"amount": 1999, "currency": "USD"}})
        },
    },
    Builtin {
        name: "return_approved",
        subject: "Return approved for order {{ order_number }}",
        short: "Your return for order {{ order_number }} is approved.",
        email: "Your return {{ return_id }} for order {{ order_number }} is approved.\n\nWe will refund you as soon as the items are back.\n",
        sample: || json!({"order_id": "ord_01EXAMPLE", "order_number": "M-1001", "return_id": "ret_01EXAMPLE"}),
    },
    Builtin {
        name: "low_stock",
        subject: "Low stock: {{ sku }}",
        short: "Low stock: {{ sku }} has {{ available }} left in {{ warehouse_id }} (threshold {{ threshold }}).",
        email: "Stock of {{ sku }} in warehouse {{ warehouse_id }} is down to {{ available }} (threshold {{ threshold }}).\n\nConsider restocking.\n",
        sample: || json!({"sku": "TEE-M", "warehouse_id": "wh_01EXAMPLE", "available": 3, "threshold": 10}),
    },
    Builtin {
        name: "webhook_disabled",
        subject: "Webhook endpoint disabled: {{ url }}",
        short: "The webhook endpoint {{ url }} failed for 3 days and was disabled.",
        email: "Every delivery to the webhook endpoint {{ url }} ({{ endpoint_id }}) has failed since {{ failing_since }}, so it was disabled.\n\nFix the endpoint, enable it again (PATCH /api/v1/admin/webhooks/{{ endpoint_id }} {\"status\": \"enabled\"}) and redeliver the dead deliveries.\n",
        sample: || json!({"endpoint_id": "wh_01EXAMPLE", "url": "https://shop.example/hooks", "failing_since": "2026-01-01T00:00:00Z"}),
    },
    Builtin {
        name: "welcome",
        subject: "Welcome to Mercato, {{ name }}",
        short: "Welcome to Mercato, {{ name }}!",
        email: "Hi {{ name }},\n\nWelcome to Mercato. Your account is ready.\n",
        sample: || json!({"name": "Ada", "user_id": "usr_01EXAMPLE"}),
    },
    Builtin {
        name: "account_update",
        subject: "Your account was updated",
        short: "Account update: {{ message }}",
        email: "Your account was updated:\n\n{{ message }}\n",
        sample: || json!({"message": "your email address was changed"}),
    },
    Builtin {
        name: "order_update",
        subject: "Update on order {{ order_number }}",
        short: "Order {{ order_number }}: {{ message }}",
        email: "An update on order {{ order_number }}:\n\n{{ message }}\n",
        sample: || json!({"order_number": "M-1001", "message": "it will arrive a day late"}),
    },
    Builtin {
        name: "promotional",
        subject: "{{ title }}",
        short: "{{ message }}",
        email: "{{ message }}\n\nYou receive this because you opted in to offers. Turn them off in your notification preferences.\n",
        sample: || json!({"title": "Spring sale", "message": "20% off everything this weekend", "campaign_id": "spring"}),
    },
];

pub fn builtin(name: &str) -> Option<&'static Builtin> {
    BUILTINS.iter().find(|b| b.name == name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_renders_its_sample_on_every_channel() {
        let env = environment();
        for b in BUILTINS {
            let sample = (b.sample)();
            for c in Channel::ALL {
                let (s, body) = b.for_channel(c);
                let r = render(&env, s, body, &sample)
                    .unwrap_or_else(|e| panic!("{} on {c:?}: {e}", b.name));
                assert!(!r.body.trim().is_empty());
                validate_source(&env, "body", body, Some(&sample))
                    .unwrap_or_else(|e| panic!("{}: {e}", b.name));
            }
        }
    }

    #[test]
    fn strict_undefined_refuses_missing_variables() {
        let env = environment();
        let e = render(&env, None, "Hi {{ name }}", &json!({})).expect_err("strict");
        assert_eq!(e.field, "body");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn validation_names_the_line_of_a_syntax_error() {
        let env = environment();
        let e = validate_source(&env, "body", "ok\nfine\n{% if %}", None).expect_err("syntax");
        assert_eq!(e.line, Some(3));
    }

    #[test]
    fn validation_names_the_line_of_an_unknown_variable() {
        let env = environment();
        let sample = json!({"name": "Ada"});
        let e = validate_source(&env, "body", "Hi {{ name }}\n\n{{ nmae }}", Some(&sample))
            .expect_err("unknown");
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("nmae"), "{}", e.message);
        assert!(validate_source(&env, "body", "Hi {{ name | upper }}", Some(&sample)).is_ok());
    }

    #[test]
    fn runaway_templates_run_out_of_fuel() {
        let env = environment();
        let r = render(
            &env,
            None,
            "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
            &json!({}),
        );
        assert!(r.is_err());
    }

    #[test]
    fn there_is_no_file_access() {
        let env = environment();
        assert!(render(&env, None, "{% include '/etc/passwd' %}", &json!({})).is_err());
    }

    #[test]
    fn money_formats_minor_units() {
        let env = environment();
        let r = |v| {
            render(&env, None, "{{ m | money }}", &json!({"m": v}))
                .map(|r| r.body)
                .unwrap_or_default()
        };
        assert_eq!(r(json!({"amount": 1234, "currency": "usd"})), "USD 12.34");
        assert_eq!(r(json!({"amount": -5, "currency": "EUR"})), "EUR -0.05");
        assert_eq!(r(json!({"amount": 500, "currency": "JPY"})), "JPY 500");
        assert_eq!(r(json!({"amount": 1500, "currency": "KWD"})), "KWD 1.500");
        assert!(render(&env, None, "{{ 3 | money }}", &json!({})).is_err());
    }
}
