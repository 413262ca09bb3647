-- citycard schema, version 1. Money columns are integer fen.

CREATE TABLE meta (
    key   text PRIMARY KEY,
    value text NOT NULL
);

CREATE TABLE cards (
    card_no     bigint PRIMARY KEY,
    shard_id    integer NOT NULL,
    category    smallint NOT NULL DEFAULT 0,
    status      smallint NOT NULL DEFAULT 0,
    opening_fen bigint NOT NULL DEFAULT 0 CHECK (opening_fen >= 0),
    issued_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX cards_by_shard ON cards (shard_id);

CREATE TABLE terminals (
    terminal_id integer PRIMARY KEY,
    kind        smallint NOT NULL,
    enabled     boolean NOT NULL DEFAULT true,
    name        text NOT NULL DEFAULT '',
    route       integer NOT NULL DEFAULT 0,
    last_seq    bigint NOT NULL DEFAULT 0,
    taps        bigint NOT NULL DEFAULT 0,
    charged_fen bigint NOT NULL DEFAULT 0,
    seq_gaps    bigint NOT NULL DEFAULT 0,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- The transaction journal: one row per decided tap, in each shard's apply order (lsn).
-- Partitioned by shard so each shard appends to, and recovers from, its own table. No unique
-- index on the hot path: dedupe lives in the shard; audits check (terminal_id, seq) offline.
CREATE TABLE journal (
    shard_id          integer NOT NULL,
    lsn               bigint NOT NULL,
    terminal_id       integer NOT NULL,
    seq               bigint NOT NULL,
    card_no           bigint NOT NULL,
    kind              smallint NOT NULL,
    route             integer NOT NULL,
    tap_time_ms       bigint NOT NULL,
    applied_ms        bigint NOT NULL,
    result            smallint NOT NULL,
    amount_fen        bigint NOT NULL,
    balance_after_fen bigint NOT NULL
) PARTITION BY LIST (shard_id);

-- Last committed lsn per shard, updated in the same transaction as each group commit.
CREATE TABLE shard_heads (
    shard_id   integer PRIMARY KEY,
    lsn        bigint NOT NULL DEFAULT 0,
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE snapshots (
    shard_id     integer NOT NULL,
    snapshot_lsn bigint NOT NULL,
    cards        integer NOT NULL,
    balance_fen  bigint NOT NULL,
    taken_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (shard_id, snapshot_lsn)
);

CREATE TABLE snapshot_cards (
    shard_id     integer NOT NULL,
    snapshot_lsn bigint NOT NULL,
    card_no      bigint NOT NULL,
    balance_fen  bigint NOT NULL
);
CREATE INDEX snapshot_cards_by_snapshot ON snapshot_cards (shard_id, snapshot_lsn);

CREATE TABLE hotlist (
    card_no   bigint PRIMARY KEY,
    reason    text NOT NULL,
    listed_at timestamptz NOT NULL DEFAULT now(),
    version   bigint NOT NULL
);

-- Every hotlist change, versioned, so terminals can fetch deltas since the version they hold.
CREATE TABLE hotlist_log (
    version bigserial PRIMARY KEY,
    card_no bigint NOT NULL,
    listed  boolean NOT NULL,
    reason  text NOT NULL,
    at      timestamptz NOT NULL DEFAULT now()
);
