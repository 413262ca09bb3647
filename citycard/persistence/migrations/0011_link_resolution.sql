-- The link's unknown outcomes and advice expiry (docs/interop.md, 3 and 5.5). Issue 15.
--
-- standin_taps now also holds *voids*: a visitor's tap sent to its issuer that got no answer
-- (outcome unknown there) and was then refused here by stand-in. The terminal heard no; the
-- issuer may have charged. The row is advice owed like an approval: the issuer must hold the
-- key refused for good, and credit back what it charged for it.
ALTER TABLE standin_taps ADD COLUMN refused_code integer;  -- NULL: an approval; else the Result the terminal heard
ALTER TABLE standin_taps ADD COLUMN attempts integer NOT NULL DEFAULT 0;  -- advice answered "undecided"
ALTER TABLE standin_taps ADD COLUMN next_try_ms bigint NOT NULL DEFAULT 0;  -- not advised again before this
ALTER TABLE standin_taps ADD COLUMN reason text;  -- why a row ended as it did, for people (expiry)
ALTER TABLE standin_taps DROP CONSTRAINT standin_taps_state_check;
-- pending -> confirmed | declined (approvals; an approval that stays undecided too long is
-- declined with a reason: the acquirer's loss) or voided | reversed | expired (voids).
ALTER TABLE standin_taps ADD CONSTRAINT standin_taps_state_check
    CHECK (state IN ('pending', 'confirmed', 'declined', 'voided', 'reversed', 'expired'));
