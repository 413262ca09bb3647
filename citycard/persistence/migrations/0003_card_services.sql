-- Card services: op rows in the journal, cardholders, operators and their audit log, PINs and
-- card replacements.

-- A card-service op (top-up, refund, credit, status, applications, products, replacement) is a
-- journal row like a tap: kind >= 100, its idempotency key and the encoded op for replay.
ALTER TABLE journal ADD COLUMN op_key text, ADD COLUMN op bytea;
CREATE UNIQUE INDEX journal_op_key ON journal (shard_id, op_key) WHERE op_key IS NOT NULL;
-- history per card, newest first (taps and ops); lsn orders within a shard
CREATE INDEX journal_by_card ON journal (card_no, lsn);

CREATE TABLE holders (
    holder_id   bigserial PRIMARY KEY,
    citizen_id  text NOT NULL UNIQUE,  -- 18-character resident identity number, check digit valid
    name        text NOT NULL,
    birth_date  date NOT NULL,
    category    smallint NOT NULL,
    photo_ref   text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE cards ADD COLUMN holder_id bigint REFERENCES holders;  -- NULL: bulk-loaded demo cards
CREATE INDEX cards_by_holder ON cards (holder_id) WHERE holder_id IS NOT NULL;
-- Serials of cards issued at the counter; bulk-loaded city cards use serials below this.
CREATE SEQUENCE card_serial START 5000000000;

CREATE TABLE api_tokens (
    token_id    bigserial PRIMARY KEY,
    token_hash  bytea NOT NULL UNIQUE,  -- sha256 of the token; the token itself is never stored
    operator    text NOT NULL,
    roles       text[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);

-- Who did what, when, with the state before and after. Append only.
CREATE TABLE audit_log (
    audit_id  bigserial PRIMARY KEY,
    at        timestamptz NOT NULL DEFAULT now(),
    operator  text NOT NULL,
    role      text NOT NULL,
    action    text NOT NULL,
    subject   text NOT NULL,
    before    jsonb,
    after     jsonb,
    reason    text NOT NULL DEFAULT ''
);
CREATE INDEX audit_log_by_subject ON audit_log (subject, audit_id);
CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit_log is append-only';
END $$;
CREATE TRIGGER audit_log_no_change BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();

CREATE TABLE card_pins (
    card_no       bigint PRIMARY KEY REFERENCES cards,
    pin_hash      bytea NOT NULL,  -- a slow KDF (see api/pins.py), never a plain hash
    salt          bytea NOT NULL,
    kdf           text NOT NULL,   -- algorithm and parameters, so they can be raised later
    failed_tries  integer NOT NULL DEFAULT 0,
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- A replacement moves an old card's money and products to a new card exactly once.
CREATE TABLE replacements (
    old_card_no  bigint PRIMARY KEY REFERENCES cards,
    new_card_no  bigint NOT NULL UNIQUE REFERENCES cards,
    state        text NOT NULL CHECK (state IN ('started', 'moved_out', 'done')),
    moved        bytea,  -- what left the old card (encoded), until the new card has it
    reason       text NOT NULL DEFAULT '',
    created_at   timestamptz NOT NULL DEFAULT now(),
    done_at      timestamptz
);
