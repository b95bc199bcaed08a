-- The ledger's hot path without index churn or a hot campaign row.
--
-- Every recipient row is written twice while a campaign sends (claim, then mark).
-- Postgres can do those writes as HOT updates (no new index entries, the old
-- version pruned in place) only if no indexed column changes and the new version
-- fits on the same page. `status` was in the predicates of two partial indexes, so
-- every claim and mark added an entry to every index of the table; profiling a
-- 1,000,000-recipient run showed the senders' backends spending most of their CPU
-- there (docs/BENCHMARKS.md). So:
--
-- * no index mentions `status`, `lease_token` or `lease_expires_at`: the packer and
--   the claim find rows by primary key within an id range, and expired leases are
--   found through `recipient_leases` below, one row per claimed batch;
-- * the table leaves half of each page free (fillfactor 50): a claim rewrites
--   every row of a page in one statement, and each new version must fit beside
--   the old one. The cost is disk: a freshly imported campaign takes about twice
--   the heap space.
DROP INDEX IF EXISTS recipients_open;
DROP INDEX IF EXISTS recipients_leases;
ALTER TABLE recipients SET (fillfactor = 50);

-- One row per claimed batch: which rows a lease token covers and until when. A
-- sender deletes its row when the batch is done; a row that outlives its expiry
-- means the sender died, and the packer's sweep re-batches the rows still held
-- under that token. The recipient rows keep their own `lease_expires_at`, which
-- is what a claim checks before taking a row over.
CREATE TABLE recipient_leases (
    lease_token  uuid PRIMARY KEY,
    campaign_id  uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    first_id     bigint NOT NULL,
    last_id      bigint NOT NULL,
    expires_at   timestamptz NOT NULL
);
CREATE INDEX recipient_leases_expiry ON recipient_leases (expires_at);
CREATE INDEX recipient_leases_campaign ON recipient_leases (campaign_id);

-- The ledger counters' changes while a campaign sends, spread over a few rows per
-- campaign. Claims and marks of different batches add to different shards, so
-- they neither wait on one row lock nor rewrite the campaign row (whose lock a
-- claim shares with other claims, and a transition takes alone). A campaign's
-- counters are its columns on `campaigns` plus the sum of its shards; imports
-- still write the columns.
CREATE TABLE campaign_counter_deltas (
    campaign_id  uuid NOT NULL REFERENCES campaigns(id) ON DELETE CASCADE,
    shard        smallint NOT NULL,
    pending      bigint NOT NULL DEFAULT 0,
    sending      bigint NOT NULL DEFAULT 0,
    sent         bigint NOT NULL DEFAULT 0,
    failed       bigint NOT NULL DEFAULT 0,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (campaign_id, shard)
);
