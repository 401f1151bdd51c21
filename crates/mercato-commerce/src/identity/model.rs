//! Identity's pure types and rules: emails, passwords, roles, statuses, addresses.

use mercato_kernel::Timestamp;
use mercato_kernel::auth::Role;
use mercato_kernel::error::{ApiError, Validator};
use serde::{Deserialize, Serialize};

mercato_kernel::typed_id!(
    /// A person's account.
    UserId, "usr");
mercato_kernel::typed_id!(
    /// A saved address.
    AddressId, "adr");
mercato_kernel::typed_id!(
    /// A server-to-server API key.
    ApiKeyId, "key");

pub const MIN_PASSWORD_LEN: usize = 10;
/// Upper bound so a huge "password" cannot make hashing expensive.
pub const MAX_PASSWORD_LEN: usize = 1024;

/// A normalised (lower-case, trimmed) email address.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Accepts `local@domain.tld` with no spaces, ≤ 254 chars, local part ≤ 64.
    pub fn parse(raw: &str) -> Option<Email> {
        let s = raw.trim().to_lowercase();
        if s.is_empty() || s.len() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return None;
        }
        let (local, domain) = s.rsplit_once('@')?;
        if local.is_empty() || local.len() > 64 || local.contains('@') {
            return None;
        }
        if local.starts_with('.') || local.ends_with('.') || local.contains("..") {
            return None;
        }
        let labels: Vec<&str> = domain.split('.').collect();
        if labels.len() < 2 {
            return None;
        }
        let label_ok = |l: &&str| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.chars().all(|c| c.is_alphanumeric() || c == '-')
        };
        if !labels.iter().all(label_ok) {
            return None;
        }
        Some(Email(s))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A password that passed the policy (never logged, never serialized).
pub struct Password(String);

impl Password {
    pub fn parse(raw: &str) -> Result<Password, &'static str> {
        let n = raw.chars().count();
        if n < MIN_PASSWORD_LEN {
            return Err("password must be at least 10 characters");
        }
        if n > MAX_PASSWORD_LEN {
            return Err("password must be at most 1024 characters");
        }
        if raw.trim().is_empty() {
            return Err("password must not be blank");
        }
        Ok(Password(raw.to_owned()))
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password(***)")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum UserStatus {
    Active,
    Suspended,
}

impl UserStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            UserStatus::Active => "active",
            UserStatus::Suspended => "suspended",
        }
    }
    pub fn parse(s: &str) -> Option<UserStatus> {
        match s {
            "active" => Some(UserStatus::Active),
            "suspended" => Some(UserStatus::Suspended),
            _ => None,
        }
    }
}

/// Roles a person (not an API key) can hold.
pub fn person_role(role: Role) -> bool {
    matches!(role, Role::Customer | Role::Seller | Role::Admin)
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: Option<String>,
    pub role: Role,
    pub status: UserStatus,
    pub created_at: Timestamp,
    /// When the email was proven (`POST /auth/verify-email`); `null` until then.
    pub email_verified_at: Option<Timestamp>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct Address {
    pub id: String,
    pub name: String,
    pub line1: String,
    pub line2: Option<String>,
    pub city: String,
    pub region: Option<String>,
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    pub country: String,
    pub phone: Option<String>,
    pub is_default: bool,
}

/// Address fields as sent by clients (also embedded in checkouts).
#[derive(Clone, Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AddressInput {
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub name: String,
    #[schema(min_length = 1, max_length = 200, pattern = r"\S")]
    pub line1: String,
    #[schema(max_length = 200)]
    pub line2: Option<String>,
    #[schema(min_length = 1, max_length = 100, pattern = r"\S")]
    pub city: String,
    #[schema(max_length = 100)]
    pub region: Option<String>,
    #[schema(min_length = 1, max_length = 20, pattern = r"\S")]
    pub postal_code: String,
    /// ISO 3166-1 alpha-2.
    #[schema(pattern = r"^\s*[A-Za-z]{2}\s*$")]
    pub country: String,
    /// Digits and ` +-().`, at least 5 digits, at most 32 characters.
    #[schema(pattern = r"^\s*$|^[0-9 +().-]*([0-9][ +().-]*){5}$", max_length = 32)]
    pub phone: Option<String>,
    #[serde(default)]
    pub is_default: bool,
}

impl AddressInput {
    /// Validates and normalises (trimmed, country upper-cased). `prefix` names the field path.
    pub fn validate(mut self, prefix: &str) -> Result<AddressInput, ApiError> {
        let mut v = Validator::new();
        // Lengths bound what was sent (the schema's maxLength), before trimming.
        let over = |s: Option<&str>, max: usize| s.is_some_and(|s| s.chars().count() > max);
        let too_long = [
            ("name", over(Some(&self.name), 200)),
            ("line1", over(Some(&self.line1), 200)),
            ("line2", over(self.line2.as_deref(), 200)),
            ("city", over(Some(&self.city), 100)),
            ("region", over(self.region.as_deref(), 100)),
            ("postal_code", over(Some(&self.postal_code), 20)),
            ("phone", over(self.phone.as_deref(), 32)),
        ];
        let f = |name: &str| {
            if prefix.is_empty() {
                name.to_owned()
            } else {
                format!("{prefix}.{name}")
            }
        };
        let trim = |s: &mut String| *s = s.trim().to_owned();
        trim(&mut self.name);
        trim(&mut self.line1);
        trim(&mut self.city);
        trim(&mut self.postal_code);
        self.country = self.country.trim().to_ascii_uppercase();
        for opt in [&mut self.line2, &mut self.region, &mut self.phone] {
            if let Some(s) = opt.as_mut() {
                trim(s);
            }
            if opt.as_deref() == Some("") {
                *opt = None;
            }
        }
        let bounded = |s: &str, max: usize| !s.is_empty() && s.chars().count() <= max;
        v.check(
            bounded(&self.name, 200),
            &f("name"),
            "name is required (≤ 200 chars)",
        );
        v.check(
            bounded(&self.line1, 200),
            &f("line1"),
            "line1 is required (≤ 200 chars)",
        );
        v.check(
            bounded(&self.city, 100),
            &f("city"),
            "city is required (≤ 100 chars)",
        );
        v.check(
            bounded(&self.postal_code, 20),
            &f("postal_code"),
            "postal_code is required (≤ 20 chars)",
        );
        v.check(
            self.country.len() == 2 && self.country.bytes().all(|b| b.is_ascii_uppercase()),
            &f("country"),
            "country must be an ISO 3166-1 alpha-2 code",
        );
        for (field, long) in too_long {
            v.check(!long, &f(field), &format!("{field} is too long"));
        }
        if let Some(l2) = &self.line2 {
            v.check(l2.chars().count() <= 200, &f("line2"), "line2 is too long");
        }
        if let Some(r) = &self.region {
            v.check(r.chars().count() <= 100, &f("region"), "region is too long");
        }
        if let Some(p) = &self.phone {
            v.check(
                p.len() <= 32
                    && p.chars().filter(|c| c.is_ascii_digit()).count() >= 5
                    && p.chars()
                        .all(|c| c.is_ascii_digit() || " +-().".contains(c)),
                &f("phone"),
                "phone must be a phone number",
            );
        }
        v.finish()?;
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_normalised_and_validated() {
        assert_eq!(
            Email::parse("  Alice@Example.COM ").map(|e| e.as_str().to_owned()),
            Some("alice@example.com".into())
        );
        for bad in [
            "",
            "alice",
            "alice@",
            "@example.com",
            "alice@example",
            "a b@example.com",
            "alice@exa mple.com",
            "alice@-example.com",
            "a..b@example.com",
            "alice@example..com",
        ] {
            assert!(Email::parse(bad).is_none(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn password_policy() {
        assert!(Password::parse("short").is_err());
        assert!(Password::parse("          ").is_err());
        assert!(Password::parse("long enough pw").is_ok());
        assert!(Password::parse(&"x".repeat(2000)).is_err());
    }

    #[test]
    fn addresses_are_validated_and_normalised() {
        let a = AddressInput {
            name: " Ada ".into(),
            line1: "1 Main St".into(),
            line2: Some("".into()),
            city: "Paris".into(),
            region: None,
            postal_code: "75001".into(),
            country: "fr".into(),
            phone: None,
            is_default: false,
        }
        .validate("")
        .expect("valid");
        assert_eq!(a.name, "Ada");
        assert_eq!(a.country, "FR");
        assert_eq!(a.line2, None);
        let bad = AddressInput {
            country: "France".into(),
            ..a
        };
        assert!(bad.validate("shipping_address").is_err());
    }
}
