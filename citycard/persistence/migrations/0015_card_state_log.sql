-- Issue 17: a snapshot appends its cards' states instead of upserting them. At scale 1 an
-- upsert of a million random cards rewrote nearly every page of card_states (435-700 MB of
-- WAL compressed, 24-30 s) and stopped the journal's commits at the peak; appending the same
-- states writes new pages only (about 210 MB, 4 s; scripts/bench_snapshot_wal.py). A card's
-- state is its newest row (the view card_states); the shard deletes rows a newer one
-- supersedes once its log holds twice its cards (persistence/recovery.compact_states).

ALTER TABLE card_states RENAME TO card_state_log;
ALTER TABLE card_state_log DROP CONSTRAINT card_states_pkey;
-- Rows arrive in lsn order per shard: inserts go to the right edge of this index.
CREATE INDEX card_state_log_by_lsn ON card_state_log (shard_id, as_of_lsn);

CREATE VIEW card_states AS
SELECT DISTINCT ON (shard_id, card_no) shard_id, card_no, as_of_lsn, balance_fen, state
FROM card_state_log
ORDER BY shard_id, card_no, as_of_lsn DESC;
