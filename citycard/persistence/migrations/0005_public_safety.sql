-- Issue 13: the audit log proves what happened; PIN checks in flight are not failures.

-- One audit entry per card-service op: the op's idempotency key (as its shard journals it)
-- is unique, so a retried request never writes a second entry.
ALTER TABLE audit_log ADD COLUMN op_key text;
CREATE UNIQUE INDEX audit_log_op_key ON audit_log (op_key) WHERE op_key IS NOT NULL;

-- How far each shard's journal has been checked for money ops with no audit entry (a request
-- that stopped between its op and its entry); the reconciler writes the missing ones.
CREATE TABLE audit_reconciled (
    shard_id  integer PRIMARY KEY,
    lsn       bigint NOT NULL DEFAULT 0
);

-- A PIN check reserves a try while it runs (pending_tries) and settles it as a failure or
-- gives it back; only settled failures lock the PIN. pending_at lets a reservation whose
-- process died expire instead of holding the card.
ALTER TABLE card_pins ADD COLUMN pending_tries integer NOT NULL DEFAULT 0,
                      ADD COLUMN pending_at timestamptz;

-- The reconciler's scan: op rows by lsn, without reading the taps around them.
CREATE INDEX journal_ops_by_lsn ON journal (shard_id, lsn) WHERE op_key IS NOT NULL;
