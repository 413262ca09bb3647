-- The city-pass's offline records (issue 14; docs/protocol.md section 15, docs/database.md).
--
-- offline_records: every record the host journaled as the card's money, once by (card,
-- offline counter). Not partitioned: every lookup is by card (the primary key serves the
-- duplicate check and a card's history), rows are only appended, and a time partition
-- could not keep (card, counter) unique across partitions. A BRIN index serves time ranges
-- (reports) for a few pages. No foreign key to cards: the writer checks the card when it
-- locks its offline_cards row, and a key check per row would cost ~ a tenth of the insert.
CREATE TABLE offline_records (
    card_no           bigint NOT NULL,
    offline_counter   integer NOT NULL CHECK (offline_counter BETWEEN 0 AND 65535),
    amount_fen        bigint NOT NULL CHECK (amount_fen >= 0),
    balance_after_fen bigint NOT NULL CHECK (balance_after_fen >= 0),
    tx_type           smallint NOT NULL,
    terminal_id       bigint NOT NULL,
    terminal_seq      bigint NOT NULL,
    tx_when           bigint NOT NULL,       -- the validator's YYYYMMDDhhmmss, as the TAC covers it
    tac               bytea NOT NULL,
    kind              smallint NOT NULL,
    route             integer NOT NULL,
    code              smallint NOT NULL,     -- OfflineCode: ACCEPTED or BALANCE_IMPOSSIBLE
    batch_seq         bigint NOT NULL,       -- the upload that brought it (terminal_id's)
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (card_no, offline_counter)
);
CREATE INDEX offline_records_by_time ON offline_records USING brin (received_at);

-- Records the host refused (BAD_TAC, COUNTER_REUSED, CARD_UNKNOWN, BAD_RECORD): kept for the
-- investigation, never money. Many may share a key (a forger tries again).
CREATE TABLE offline_rejects (
    card_no           bigint NOT NULL,
    offline_counter   integer NOT NULL,
    amount_fen        bigint NOT NULL,
    balance_after_fen bigint NOT NULL,
    tx_type           smallint NOT NULL,
    terminal_id       bigint NOT NULL,
    terminal_seq      bigint NOT NULL,
    tx_when           bigint NOT NULL,
    tac               bytea NOT NULL,
    kind              smallint NOT NULL,
    route             integer NOT NULL,
    code              smallint NOT NULL,
    batch_seq         bigint NOT NULL,
    received_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX offline_rejects_by_card ON offline_rejects (card_no);

-- Each upload answered, with its codes: a batch sent again (its ack was lost) gets the same
-- answer and journals nothing.
CREATE TABLE offline_batches (
    terminal_id bigint NOT NULL,
    batch_seq   bigint NOT NULL,
    mac         bytea NOT NULL,
    codes       smallint[] NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (terminal_id, batch_seq)
);

-- The host's shadow of each card's purse (domain/offline_book.py CardShadow). Its row lock
-- orders every writer of a card's offline state (uploads, loads), taken in card order.
CREATE TABLE offline_cards (
    card_no      bigint PRIMARY KEY REFERENCES cards,
    last_counter integer NOT NULL DEFAULT -1,
    loaded_fen   bigint NOT NULL DEFAULT 0,
    spent_fen    bigint NOT NULL DEFAULT 0,
    seen         bytea NOT NULL DEFAULT ''::bytea,  -- the window of counters below last_counter seen
    missing      integer NOT NULL DEFAULT 0,        -- counters below last_counter not yet journaled
    updated_at   timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);  -- room on each page: every upload updates its cards' rows in place (HOT)

-- Counters a record showed were skipped, as found (a later upload may fill them: a gap is
-- open while offline_records lacks one of its counters).
CREATE TABLE offline_gaps (
    card_no      bigint NOT NULL,
    counter_from integer NOT NULL,
    counter_to   integer NOT NULL,
    terminal_id  bigint NOT NULL,
    batch_seq    bigint NOT NULL,
    found_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX offline_gaps_by_card ON offline_gaps (card_no);

-- Loads onto the card's purse at a counter (docs/api.md, purse loads): once per idempotency
-- key; at most one per online counter of the card (the card's INITIALIZE FOR LOAD answer).
CREATE TABLE purse_loads (
    card_no            bigint NOT NULL REFERENCES cards,
    idem_key           text NOT NULL,
    amount_fen         bigint NOT NULL CHECK (amount_fen > 0),
    source             text NOT NULL CHECK (source IN ('account', 'cash')),
    terminal_id        bigint NOT NULL,
    online_counter     integer NOT NULL,
    balance_before_fen bigint NOT NULL,
    state              text NOT NULL DEFAULT 'pending' CHECK (state IN ('pending', 'confirmed')),
    host_when          bigint NOT NULL,      -- YYYYMMDDhhmmss of the latest MAC2
    tac                bytea,
    tac_verified       boolean NOT NULL DEFAULT false,
    operator           text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now(),
    confirmed_at       timestamptz,
    PRIMARY KEY (card_no, idem_key)
);
CREATE UNIQUE INDEX purse_loads_one_per_counter ON purse_loads (card_no, online_counter);
