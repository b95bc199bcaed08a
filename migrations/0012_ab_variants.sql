-- A/B/n tests (docs/AB_TESTS.md): a campaign with 2 to 5 variants instead of
-- one template, each recipient assigned one at import, optionally a test
-- cohort sent first and a winner that the rest of the list gets.

-- `variants`: [{"name", "template", "weight"}]; NULL for a plain campaign
-- (whose `template` holds its one template; an A/B campaign's is JSON null).
-- `ab_test`: {"test_percent", "winner_metric", "decide_after_seconds"}; NULL
-- when every recipient simply gets its weighted variant.
-- `ab_winner`: the chosen variant's name once decided; `ab_test_done_at`: when
-- the test cohort had nothing open any more (the automatic decision is due
-- `decide_after_seconds` later).
ALTER TABLE campaigns ADD COLUMN variants jsonb;
ALTER TABLE campaigns ADD COLUMN ab_test jsonb;
ALTER TABLE campaigns ADD COLUMN ab_winner text;
ALTER TABLE campaigns ADD COLUMN ab_decided_at timestamptz;
ALTER TABLE campaigns ADD COLUMN ab_test_done_at timestamptz;

-- The recipient's variant (NULL in a plain campaign) and cohort ('test' or
-- 'rest' in a campaign with an `ab_test`, else NULL), both decided at import
-- from a hash of the campaign id and the normalised address. The claim rewrites
-- a 'rest' row's variant to the winner when it takes the row, so `variant` is
-- always the template the recipient got (or will get).
--
-- No index mentions either column, and only the claim writes `variant`, so the
-- ledger's claim and mark stay HOT updates (0002_hot_ledger.sql). Nullable
-- columns without a default: instant on a large ledger.
ALTER TABLE recipients ADD COLUMN variant text;
ALTER TABLE recipients ADD COLUMN ab_cohort text CHECK (ab_cohort IN ('test', 'rest'));

-- Counters per variant, sharded like `campaign_counter_deltas` and written by
-- the same statements that move those (import, claim, mark, receipts), so a
-- campaign's read never counts its ledger. A variant's figure is the sum over
-- its shards. `recipients` and `test_recipients` are the rows assigned to it at
-- import (all of them, and those of the test cohort); `test_open` the test
-- cohort's rows still pending or sending while the campaign sends (what the
-- wait for a decision waits for).
CREATE TABLE campaign_variant_counts (
    campaign_id      uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    shard            smallint NOT NULL,
    variant          text NOT NULL,
    recipients       bigint NOT NULL DEFAULT 0,
    test_recipients  bigint NOT NULL DEFAULT 0,
    test_open        bigint NOT NULL DEFAULT 0,
    sent             bigint NOT NULL DEFAULT 0,
    failed           bigint NOT NULL DEFAULT 0,
    delivered        bigint NOT NULL DEFAULT 0,
    read             bigint NOT NULL DEFAULT 0,
    PRIMARY KEY (campaign_id, shard, variant)
);

-- The variant a message was rendered with, so a receipt counts per variant
-- without reading the ledger row.
ALTER TABLE provider_messages ADD COLUMN variant text;
