-- Retry by scope (POST /v1/campaigns/{id}/retry) and auto-pause on failure rate.
--
-- `attempts` counts every provider request ever made for a recipient;
-- `HERALD_MAX_ATTEMPTS` bounds the requests since `attempts_base`. A retry
-- sets `attempts_base = attempts`, so a retried row gets a fresh allowance and
-- its history stays whole (herald_core::retry). The claim returns
-- `attempts - attempts_base`. Not indexed, so marks stay HOT updates
-- (0002_hot_ledger.sql); a constant default rewrites nothing.
ALTER TABLE recipients ADD COLUMN attempts_base integer NOT NULL DEFAULT 0;
