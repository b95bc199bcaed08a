-- A campaign's counts by reason code (`reasons` on GET /v1/campaigns/{id}), and
-- the stops whose recipients are still being skipped.
--
-- Counts by reason: no index on `recipients` may mention `reason` (the claim and
-- the mark write it; see 0002_hot_ledger.sql), so counting reasons from the
-- ledger means reading every row of the campaign: about 0.3 s for a million
-- recipients, on every read of the campaign. Instead every statement that gives rows a reason adds
-- to these counts, like the ledger counters in `campaign_counter_deltas`: a few
-- shard rows per campaign and reason, so concurrent writers of one campaign
-- seldom wait on one row. A campaign's count for a reason is the sum over its
-- shards; a row that leaves a reason behind adds -1.
CREATE TABLE campaign_reason_counts (
    campaign_id  uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    shard        smallint NOT NULL,
    reason       text NOT NULL,
    count        bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, shard, reason)
);

-- A stopped (or failed) campaign whose open recipients are still to be skipped.
-- The halting transition inserts the row in its own transaction; the process
-- that committed it then skips the rows in chunks by id (each chunk moves
-- `cursor` and `updated_at`) and deletes the row when it is done. A row left idle
-- means that process died: the packer's sweep resumes the pass from `cursor`.
CREATE TABLE campaign_halts (
    campaign_id  uuid PRIMARY KEY REFERENCES campaigns(id) ON DELETE CASCADE,
    reason       text NOT NULL,
    cursor       bigint NOT NULL DEFAULT 0,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
