-- Email verification (issue 17: guest orders attach to an account only once its email is
-- proven). A token is sent by email; only its SHA-256 is kept here.
ALTER TABLE users ADD COLUMN email_verified_at BIGINT;
CREATE TABLE email_verifications (
    token_hash TEXT PRIMARY KEY,
    user_id TEXT NOT NULL,
    email TEXT NOT NULL,
    expires_at BIGINT NOT NULL,
    used_at BIGINT,
    created_at BIGINT NOT NULL
);
CREATE INDEX email_verifications_user ON email_verifications (user_id, created_at);
