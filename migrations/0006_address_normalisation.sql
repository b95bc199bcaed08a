-- Normalised addresses (docs/IMPORTS.md): `recipients.address` is the normalised
-- form (E.164 phone numbers, e-mail domains lower-cased, other addresses
-- trimmed), the one sent to and deduped on.
--
-- `address_input` keeps what the user typed when it differs from `address`
-- (NULL when identical). `address_kind` is what the address was read as:
-- 'phone', 'email' or 'opaque'; NULL for rows imported before this migration.
-- Adding nullable columns rewrites nothing, so this is instant on a large ledger.
ALTER TABLE recipients ADD COLUMN address_input text;
ALTER TABLE recipients ADD COLUMN address_kind text
    CHECK (address_kind IN ('phone', 'email', 'opaque'));

-- E-mail addresses are one recipient whatever their case: `ana@example.com` and
-- `Ana@Example.COM` in one campaign are a duplicate. (Phone numbers are
-- canonical once in E.164, and opaque addresses compare exactly, through the
-- table's UNIQUE (campaign_id, address).) An import's `ON CONFLICT DO NOTHING`
-- has every unique index as an arbiter, this one included.
--
-- No column here is written by the sender's claim or mark, so the ledger's
-- updates stay HOT (migrations/0002_hot_ledger.sql).
CREATE UNIQUE INDEX recipients_email_dedupe ON recipients (campaign_id, lower(address))
    WHERE address_kind = 'email';
