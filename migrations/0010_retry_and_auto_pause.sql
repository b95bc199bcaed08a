-- Retry by scope (POST /v1/campaigns/{id}/retry) and auto-pause on failure rate.
--
-- `attempts` counts every provider request ever made for a recipient;
-- `HERALD_MAX_ATTEMPTS` bounds the requests since `attempts_base`. A retry
-- sets `attempts_base = attempts`, so a retried row gets a fresh allowance and
-- its history stays whole (herald_core::retry). The claim returns
-- `attempts - attempts_base`. Not indexed, so marks stay HOT updates
-- (0002_hot_ledger.sql); a constant default rewrites nothing.
ALTER TABLE recipients ADD COLUMN attempts_base integer NOT NULL DEFAULT 0;

-- Auto-pause (herald_core::auto_pause): `{"max_failure_rate": 0.5, "window": 100}`
-- or NULL.
ALTER TABLE campaigns ADD COLUMN auto_pause jsonb;

-- The last `window_size` outcomes of a campaign with auto_pause, across all
-- sender replicas, as a text ring of '0' (sent) and '1' (failed), newest last.
-- The sender's outcome write appends to it in the statement that marks the
-- rows (in campaign order, after the counter and reason shards), so the window
-- costs no extra round trip and campaigns without auto_pause never touch it.
-- Start, resume and retry empty it.
CREATE TABLE campaign_outcome_windows (
    campaign_id  uuid PRIMARY KEY REFERENCES campaigns(id) ON DELETE CASCADE,
    window_size  integer NOT NULL,
    outcomes     text NOT NULL DEFAULT ''
);
