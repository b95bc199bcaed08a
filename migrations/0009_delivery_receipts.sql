-- Delivery receipts (docs/RECEIPTS.md): what happened to a message after the
-- provider accepted it.
--
-- Every channel gets an unguessable token for its receipts URL,
-- `POST /v1/receipts/{channel_id}/{token}`, which providers call without an API
-- token. 256 bits from two v4 UUIDs (gen_random_uuid draws from the server's
-- strong random source), hex without dashes.
ALTER TABLE channels ADD COLUMN receipts_token text NOT NULL
    DEFAULT replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');

-- One row per message a provider accepted with an id: what a receipt names
-- (the provider's message id, unique per channel) mapped to the recipient it
-- was sent to, and how far the message got. The sender inserts it in the same
-- statement that marks the recipient sent, so a receipt can never find a
-- message whose recipient is not yet `sent`.
--
-- Kept apart from `recipients` on purpose: finding a row by provider id needs
-- an index, and an index on a column the mark writes would end the ledger's
-- HOT updates (0002_hot_ledger.sql). Receipt states live here too, so a
-- receipt rewrites this narrow row and touches `recipients` only for a bounce.
--
-- `state` only moves forward: sent -> delivered -> read, or sent -> bounced.
--
-- No foreign keys and no index but the key: a row is written for every message
-- sent, inside the mark, and each foreign key would add a trigger per row that
-- locks the campaign or channel row (`FOR KEY SHARE`, which the claims also
-- take), and each index an insert. Measured on the throughput scenario: with
-- them, every message carrying an id cost a third of the end-to-end rate
-- (docs/BENCHMARKS.md). Nothing deletes what they would protect: only drafts
-- (which have sent nothing) are deleted, and channels are deleted softly.
CREATE TABLE provider_messages (
    channel_id           uuid NOT NULL,
    provider_message_id  text NOT NULL,
    campaign_id          uuid NOT NULL,
    recipient_id         bigint NOT NULL,
    state                text NOT NULL DEFAULT 'sent'
        CHECK (state IN ('sent', 'delivered', 'read', 'bounced')),
    delivered_at         timestamptz,
    read_at              timestamptz,
    bounced_at           timestamptz,
    PRIMARY KEY (channel_id, provider_message_id)
);

-- The delivery funnel, counted like the ledger counters (sharded deltas):
-- `delivered` counts messages delivered or read, `read` those read, `bounced`
-- those a provider reported failed after accepting them (their recipients move
-- from sent to failed, so the ledger's `sent` drops by one for each).
ALTER TABLE campaign_counter_deltas ADD COLUMN delivered bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign_counter_deltas ADD COLUMN read bigint NOT NULL DEFAULT 0;
ALTER TABLE campaign_counter_deltas ADD COLUMN bounced bigint NOT NULL DEFAULT 0;
