//! SQL for identity's own tables: one method per use case, one transaction per method.

use super::model::{Address, AddressInput, User, UserStatus};
use mercato_events::identity::{EmailVerificationRequested, EmailVerified, UserRegistered};
use mercato_kernel::Timestamp;
use mercato_kernel::auth::Role;
use mercato_kernel::db::{Db, Row, StoreError, StoreResult, bool_of, int_of};
use mercato_kernel::idempotency::ReplayWriter;
use mercato_kernel::outbox::{self, NewEvent};
use sqlx::Row as _;

#[derive(Clone, Debug)]
pub struct IdentityStore {
    db: Db,
}

/// A user row with its password hash (never leaves the service).
pub struct Credentials {
    pub user: User,
    pub password_hash: String,
}

pub struct NewUser<'a> {
    pub id: &'a str,
    pub email: &'a str,
    pub password_hash: &'a str,
    pub name: Option<&'a str>,
    pub role: Role,
}

pub struct NewApiKey<'a> {
    pub id: &'a str,
    pub name: &'a str,
    pub role: Role,
    pub key_hash: &'a str,
    pub key_prefix: &'a str,
    pub actor: &'a str,
}

pub struct ApiKeyRow {
    pub id: String,
    pub name: String,
    pub role: Role,
    pub key_prefix: String,
    pub created_by: String,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

const USER_COLUMNS: &str = "id, email, name, role, status, created_at, email_verified_at";
const ADDRESS_COLUMNS: &str =
    "id, name, line1, line2, city, region, postal_code, country, phone, is_default";
const KEY_COLUMNS: &str = "id, name, role, key_prefix, created_by, created_at, revoked_at";

fn user_of(r: &Row) -> StoreResult<User> {
    let role: String = r.try_get("role").map_err(anyhow::Error::from)?;
    let status: String = r.try_get("status").map_err(anyhow::Error::from)?;
    Ok(User {
        id: r.try_get("id").map_err(anyhow::Error::from)?,
        email: r.try_get("email").map_err(anyhow::Error::from)?,
        name: r.try_get("name").map_err(anyhow::Error::from)?,
        role: Role::parse(&role).ok_or_else(|| anyhow::anyhow!("bad role {role} in users"))?,
        status: UserStatus::parse(&status)
            .ok_or_else(|| anyhow::anyhow!("bad status {status} in users"))?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(anyhow::Error::from)?),
        email_verified_at: r
            .try_get::<Option<i64>, _>("email_verified_at")
            .map_err(anyhow::Error::from)?
            .map(Timestamp::from_micros),
    })
}

fn address_of(r: &Row) -> StoreResult<Address> {
    let g = |e: sqlx::Error| StoreError::Other(e.into());
    Ok(Address {
        id: r.try_get("id").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        line1: r.try_get("line1").map_err(g)?,
        line2: r.try_get("line2").map_err(g)?,
        city: r.try_get("city").map_err(g)?,
        region: r.try_get("region").map_err(g)?,
        postal_code: r.try_get("postal_code").map_err(g)?,
        country: r.try_get("country").map_err(g)?,
        phone: r.try_get("phone").map_err(g)?,
        is_default: bool_of(r.try_get("is_default").map_err(g)?),
    })
}

fn key_of(r: &Row) -> StoreResult<ApiKeyRow> {
    let g = |e: sqlx::Error| StoreError::Other(e.into());
    let role: String = r.try_get("role").map_err(g)?;
    Ok(ApiKeyRow {
        id: r.try_get("id").map_err(g)?,
        name: r.try_get("name").map_err(g)?,
        role: Role::parse(&role).unwrap_or(Role::Service),
        key_prefix: r.try_get("key_prefix").map_err(g)?,
        created_by: r.try_get("created_by").map_err(g)?,
        created_at: Timestamp::from_micros(r.try_get("created_at").map_err(g)?),
        revoked_at: r
            .try_get::<Option<i64>, _>("revoked_at")
            .map_err(g)?
            .map(Timestamp::from_micros),
    })
}

impl IdentityStore {
    pub fn new(db: Db) -> IdentityStore {
        IdentityStore { db }
    }

    /// Inserts the user and, in the same transaction, `user.registered` (when `emit`).
    /// `Conflict` when the email is taken.
    pub async fn insert_user(
        &self,
        u: NewUser<'_>,
        now: Timestamp,
        emit: bool,
    ) -> StoreResult<User> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO users (id, email, password_hash, name, role, status, created_at, updated_at) \
             VALUES ($1,$2,$3,$4,$5,'active',$6,$6) RETURNING {USER_COLUMNS}"
        ))
        .bind(u.id)
        .bind(u.email)
        .bind(u.password_hash)
        .bind(u.name)
        .bind(u.role.as_str())
        .bind(now.as_micros())
        .fetch_one(&mut *tx)
        .await?;
        let user = user_of(&row)?;
        if emit {
            outbox::append(
                &mut tx,
                now,
                NewEvent::of(&UserRegistered {
                    user_id: user.id.clone(),
                    email: user.email.clone(),
                    name: user.name.clone(),
                    role: user.role,
                }),
            )
            .await?;
        }
        tx.commit().await?;
        Ok(user)
    }

    /// Stores a verification token's hash and, in the same transaction, the event that mails
    /// the token.
    pub async fn request_verification(
        &self,
        user: &User,
        token: &str,
        expires_at: Timestamp,
        now: Timestamp,
    ) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        sqlx::query(
            "INSERT INTO email_verifications (token_hash, user_id, email, expires_at, created_at) \
             VALUES ($1,$2,$3,$4,$5)",
        )
        .bind(token_hash(token))
        .bind(&user.id)
        .bind(&user.email)
        .bind(expires_at.as_micros())
        .bind(now.as_micros())
        .execute(&mut *tx)
        .await?;
        outbox::append(
            &mut tx,
            now,
            NewEvent::of(&EmailVerificationRequested {
                user_id: user.id.clone(),
                email: user.email.clone(),
                token: token.to_owned(),
                expires_at: expires_at.as_micros(),
            }),
        )
        .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Uses a verification token (once, before it expires) and marks the user's email verified
    /// when it is still the email the token was sent to; emits `user.email_verified`. `None`
    /// for an unknown, used or expired token.
    pub async fn verify_email(&self, token: &str, now: Timestamp) -> StoreResult<Option<User>> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(
            "UPDATE email_verifications SET used_at = $1 \
             WHERE token_hash = $2 AND used_at IS NULL AND expires_at > $1 RETURNING user_id, email",
        )
        .bind(now.as_micros())
        .bind(token_hash(token))
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            return Ok(None);
        };
        let user_id: String = row.try_get("user_id").map_err(anyhow::Error::from)?;
        let email: String = row.try_get("email").map_err(anyhow::Error::from)?;
        let user = sqlx::query(&format!(
            "UPDATE users SET email_verified_at = COALESCE(email_verified_at, $1), updated_at = $1 \
             WHERE id = $2 AND email = $3 RETURNING {USER_COLUMNS}"
        ))
        .bind(now.as_micros())
        .bind(&user_id)
        .bind(&email)
        .fetch_optional(&mut *tx)
        .await?;
        let Some(user) = user.as_ref().map(user_of).transpose()? else {
            // The email changed since: the token proves an address the account no longer has.
            tx.commit().await?;
            return Ok(None);
        };
        Self::announce_verified_tx(&mut tx, &user, now).await?;
        tx.commit().await?;
        Ok(Some(user))
    }

    /// `user.email_verified` for a user whose email is verified (at sign-in: guest orders
    /// bought with it since attach).
    pub async fn announce_verified(&self, user: &User, now: Timestamp) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        Self::announce_verified_tx(&mut tx, user, now).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn announce_verified_tx(
        tx: &mut mercato_kernel::db::Tx,
        user: &User,
        now: Timestamp,
    ) -> StoreResult<()> {
        outbox::append(
            tx,
            now,
            NewEvent::of(&EmailVerified {
                user_id: user.id.clone(),
                email: user.email.clone(),
            }),
        )
        .await?;
        Ok(())
    }

    pub async fn credentials_by_email(&self, email: &str) -> StoreResult<Option<Credentials>> {
        let row = sqlx::query(&format!(
            "SELECT {USER_COLUMNS}, password_hash FROM users WHERE email = $1"
        ))
        .bind(email)
        .fetch_optional(self.db.reader())
        .await?;
        row.map(|r| {
            Ok(Credentials {
                user: user_of(&r)?,
                password_hash: r.try_get("password_hash").map_err(anyhow::Error::from)?,
            })
        })
        .transpose()
    }

    pub async fn user(&self, id: &str) -> StoreResult<Option<User>> {
        let row = sqlx::query(&format!("SELECT {USER_COLUMNS} FROM users WHERE id = $1"))
            .bind(id)
            .fetch_optional(self.db.reader())
            .await?;
        row.as_ref().map(user_of).transpose()
    }

    /// Users newest first, keyset on (created_at, id).
    pub async fn list_users(
        &self,
        after: Option<(i64, String)>,
        limit: u32,
    ) -> StoreResult<Vec<User>> {
        let (ts, id) = after.unwrap_or((i64::MAX, String::new()));
        let rows = sqlx::query(&format!(
            "SELECT {USER_COLUMNS} FROM users WHERE created_at < $1 OR (created_at = $1 AND id < $2) \
             ORDER BY created_at DESC, id DESC LIMIT $3"
        ))
        .bind(ts)
        .bind(if id.is_empty() { "\u{10FFFF}".to_owned() } else { id })
        .bind(i64::from(limit) + 1)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(user_of).collect()
    }

    /// Changes a user's status (audited). `NotFound` when no such user.
    pub async fn set_status(
        &self,
        id: &str,
        status: UserStatus,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<User> {
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "UPDATE users SET status = $1, updated_at = $2 WHERE id = $3 RETURNING {USER_COLUMNS}"
        ))
        .bind(status.as_str())
        .bind(now.as_micros())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let user = user_of(&row)?;
        outbox::audit(
            &mut tx,
            now,
            actor,
            "user.status_changed",
            "user",
            id,
            serde_json::json!({"status": status}),
        )
        .await?;
        tx.commit().await?;
        Ok(user)
    }

    pub async fn addresses(&self, user_id: &str) -> StoreResult<Vec<Address>> {
        let rows = sqlx::query(&format!(
            "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 ORDER BY created_at, id"
        ))
        .bind(user_id)
        .fetch_all(self.db.reader())
        .await?;
        rows.iter().map(address_of).collect()
    }

    pub async fn address(&self, user_id: &str, id: &str) -> StoreResult<Option<Address>> {
        let row = sqlx::query(&format!(
            "SELECT {ADDRESS_COLUMNS} FROM addresses WHERE user_id = $1 AND id = $2"
        ))
        .bind(user_id)
        .bind(id)
        .fetch_optional(self.db.reader())
        .await?;
        row.as_ref().map(address_of).transpose()
    }

    /// Adds an address; the first one, or one marked default, becomes the only default.
    /// With `replay`, the idempotent response is stored in the same transaction.
    pub async fn insert_address(
        &self,
        user_id: &str,
        a: &AddressInput,
        now: Timestamp,
        replay: Option<ReplayWriter<'_>>,
    ) -> StoreResult<(Address, Vec<u8>)> {
        let mut tx = self.db.begin().await?;
        let existing: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM addresses WHERE user_id = $1")
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
        let is_default = a.is_default || existing == 0;
        if is_default {
            sqlx::query(
                "UPDATE addresses SET is_default = 0 WHERE user_id = $1 AND is_default = 1",
            )
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        }
        let id = super::model::AddressId::new();
        let row = sqlx::query(&format!(
            "INSERT INTO addresses (id, user_id, name, line1, line2, city, region, postal_code, \
             country, phone, is_default, created_at) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,$11,$12) \
             RETURNING {ADDRESS_COLUMNS}"
        ))
        .bind(id.as_str())
        .bind(user_id)
        .bind(&a.name)
        .bind(&a.line1)
        .bind(&a.line2)
        .bind(&a.city)
        .bind(&a.region)
        .bind(&a.postal_code)
        .bind(&a.country)
        .bind(&a.phone)
        .bind(int_of(is_default))
        .bind(now.as_micros())
        .fetch_one(&mut *tx)
        .await?;
        let address = address_of(&row)?;
        let body = match replay {
            Some(w) => w.write(&mut tx, &address).await?,
            None => mercato_kernel::idempotency::json_bytes(&address),
        };
        tx.commit().await?;
        Ok((address, body))
    }

    /// Deletes an address; when it was the default, the oldest remaining one becomes default.
    pub async fn delete_address(&self, user_id: &str, id: &str) -> StoreResult<()> {
        let mut tx = self.db.begin().await?;
        let was_default: Option<i64> = sqlx::query_scalar(
            "DELETE FROM addresses WHERE user_id = $1 AND id = $2 RETURNING is_default",
        )
        .bind(user_id)
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?;
        match was_default {
            None => return Err(StoreError::NotFound),
            Some(d) if bool_of(d) => {
                sqlx::query(
                    "UPDATE addresses SET is_default = 1 WHERE id = \
                     (SELECT id FROM addresses WHERE user_id = $1 ORDER BY created_at, id LIMIT 1)",
                )
                .bind(user_id)
                .execute(&mut *tx)
                .await?;
            }
            Some(_) => {}
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn insert_api_key(&self, k: NewApiKey<'_>, now: Timestamp) -> StoreResult<ApiKeyRow> {
        let NewApiKey {
            id,
            name,
            role,
            key_hash,
            key_prefix,
            actor,
        } = k;
        let mut tx = self.db.begin().await?;
        let row = sqlx::query(&format!(
            "INSERT INTO api_keys (id, name, role, key_hash, key_prefix, created_by, created_at) \
             VALUES ($1,$2,$3,$4,$5,$6,$7) RETURNING {KEY_COLUMNS}"
        ))
        .bind(id)
        .bind(name)
        .bind(role.as_str())
        .bind(key_hash)
        .bind(key_prefix)
        .bind(actor)
        .bind(now.as_micros())
        .fetch_one(&mut *tx)
        .await?;
        outbox::audit(
            &mut tx,
            now,
            actor,
            "api_key.created",
            "api_key",
            id,
            serde_json::json!({"name": name}),
        )
        .await?;
        tx.commit().await?;
        key_of(&row)
    }

    pub async fn api_keys(&self) -> StoreResult<Vec<ApiKeyRow>> {
        let rows = sqlx::query(&format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY id"))
            .fetch_all(self.db.reader())
            .await?;
        rows.iter().map(key_of).collect()
    }

    pub async fn revoke_api_key(
        &self,
        id: &str,
        actor: &str,
        now: Timestamp,
    ) -> StoreResult<ApiKeyRow> {
        let mut tx = self.db.begin().await?;
        // COALESCE keeps the first revocation time when revoked twice (idempotent).
        let row = sqlx::query(&format!(
            "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2 RETURNING {KEY_COLUMNS}"
        ))
        .bind(now.as_micros())
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        outbox::audit(
            &mut tx,
            now,
            actor,
            "api_key.revoked",
            "api_key",
            id,
            serde_json::json!({}),
        )
        .await?;
        tx.commit().await?;
        key_of(&row)
    }

    /// The active key with this hash: `(id, role)`.
    pub async fn active_key_by_hash(&self, key_hash: &str) -> StoreResult<Option<(String, Role)>> {
        let row: Option<(String, String)> = sqlx::query_as(
            "SELECT id, role FROM api_keys WHERE key_hash = $1 AND revoked_at IS NULL",
        )
        .bind(key_hash)
        .fetch_optional(self.db.reader())
        .await?;
        Ok(row.and_then(|(id, role)| Role::parse(&role).map(|r| (id, r))))
    }

    /// `(role, status)` of a user, for per-request authentication.
    pub async fn role_and_status(&self, id: &str) -> StoreResult<Option<(String, String)>> {
        Ok(
            sqlx::query_as("SELECT role, status FROM users WHERE id = $1")
                .bind(id)
                .fetch_optional(self.db.reader())
                .await?,
        )
    }
}

/// What `email_verifications` keeps of a token.
fn token_hash(token: &str) -> String {
    super::service::sha256_hex(token)
}
