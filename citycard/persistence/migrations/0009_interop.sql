-- The inter-platform link (docs/interop.md, "Running the link"). Issue 15 item 2, online part.
-- The app role's grants come from persistence/roles.py grant_app (every table of the schema).

-- Issuer side: every acquirer that ever sent a tap gets a slot, once and for good; its remote
-- taps are decided on the shards as terminal 2^30 + slot * 2^20 + its terminal_id, so the
-- shards' (terminal_id, seq) dedupe is the link's (acquirer, terminal_id, seq) key.
CREATE TABLE interop_acquirers (
    code        text PRIMARY KEY,
    slot        integer NOT NULL UNIQUE CHECK (slot >= 0 AND slot < 1024),
    first_ms    bigint NOT NULL
);

-- Acquirer side: every visitor's tap routed to its issuer, with the issuer's durable answer,
-- written before the terminal hears it (the clearing file's source for online taps).
CREATE TABLE remote_taps (
    issuer       text NOT NULL,
    terminal_id  integer NOT NULL,
    seq          bigint NOT NULL,
    card_no      bigint NOT NULL,
    kind         smallint NOT NULL,
    route        integer NOT NULL,
    tap_time_ms  bigint NOT NULL,
    amount_fen   bigint NOT NULL CHECK (amount_fen >= 0),  -- what the acquirer asked for
    result       integer NOT NULL,
    fare_fen     bigint NOT NULL CHECK (fare_fen >= 0),    -- what the issuer debited
    balance_fen  bigint NOT NULL,
    replay       boolean NOT NULL,
    answered_ms  bigint NOT NULL,
    PRIMARY KEY (terminal_id, seq)
);

-- Acquirer side: taps approved in stand-in while the issuer was unreachable: the risk taken,
-- and the advice owed until the issuer decides it. Written before the terminal hears OK.
CREATE TABLE standin_taps (
    issuer       text NOT NULL,
    terminal_id  integer NOT NULL,
    seq          bigint NOT NULL,
    card_no      bigint NOT NULL,
    kind         smallint NOT NULL,
    route        integer NOT NULL,
    tap_time_ms  bigint NOT NULL,
    amount_fen   bigint NOT NULL CHECK (amount_fen >= 0),
    state        text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'confirmed', 'declined')),
    code         integer,         -- the issuer's Result code once decided
    approved_ms  bigint NOT NULL,
    decided_ms   bigint,
    PRIMARY KEY (terminal_id, seq)
);
CREATE INDEX standin_taps_pending ON standin_taps (issuer, approved_ms) WHERE state = 'pending';
