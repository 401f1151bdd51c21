-- Guest checkout (issue 17): a checkout and its order bought without an account carry the
-- guest's email and the guest token (a bearer secret, like a guest cart's id); their
-- customer_id is the token's subject (gst_ + hash), see kernel::auth::guest_subject.
ALTER TABLE checkouts ADD COLUMN guest_email TEXT;
ALTER TABLE checkouts ADD COLUMN guest_token TEXT;
ALTER TABLE orders ADD COLUMN guest_email TEXT;
ALTER TABLE orders ADD COLUMN guest_token TEXT;
