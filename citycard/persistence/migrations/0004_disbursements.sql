-- Disbursement programmes: who is entitled (beneficiary lists), runs per period, and one item
-- per (programme, period, holder). Money moves only through the shards, as Credit ops keyed
-- disb:{programme}:{period}:{holder}; these tables record what was asked and what came back.

CREATE TABLE programmes (
    programme_id        bigserial PRIMARY KEY,
    name                text NOT NULL,
    kind                text NOT NULL CHECK (kind IN ('welfare', 'low_income_subsidy', 'transport_allowance',
                                                      'consumer_vouchers')),
    purse               smallint NOT NULL,  -- Purse index, fixed by kind
    amount_fen          bigint NOT NULL CHECK (amount_fen > 0),  -- per beneficiary unless the list says otherwise
    until_ms            bigint NOT NULL DEFAULT 0 CHECK (until_ms >= 0),  -- voucher / allowance expiry (0: none)
    merchant_categories text[] NOT NULL DEFAULT '{}',  -- vouchers: sorted, so every resend encodes the same op
    beneficiaries       bigint NOT NULL DEFAULT 0,  -- kept by uploads: reading it needs no count(*)
    created_by          text NOT NULL,
    created_at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE programme_uploads (
    upload_id    bigserial PRIMARY KEY,
    programme_id bigint NOT NULL REFERENCES programmes,
    format       text NOT NULL,  -- csv | json
    lines        bigint NOT NULL DEFAULT 0,
    accepted     bigint NOT NULL DEFAULT 0,
    rejected     bigint NOT NULL DEFAULT 0,
    uploaded_by  text NOT NULL,
    uploaded_at  timestamptz NOT NULL DEFAULT now()
);

-- No foreign keys on the million-row tables below: a per-row RI check would cost more than
-- the load itself. Rows are only ever made by INSERT ... SELECT joined to holders / cards.
CREATE TABLE programme_beneficiaries (
    programme_id bigint NOT NULL,
    holder_id    bigint NOT NULL,
    amount_fen   bigint CHECK (amount_fen > 0),  -- NULL: the programme's amount
    upload_id    bigint NOT NULL,
    PRIMARY KEY (programme_id, holder_id)
);

-- Every rejected line of an upload, with why (the upload's answer shows only the first ones).
CREATE TABLE upload_rejects (
    upload_id  bigint NOT NULL,
    line_no    bigint NOT NULL,
    citizen_id text NOT NULL,  -- as sent, cut to 40 characters
    reason     text NOT NULL,  -- unknown_citizen | malformed_citizen_id | bad_amount | duplicate | bad_line
    detail     text NOT NULL DEFAULT '',
    PRIMARY KEY (upload_id, line_no)
);

CREATE TABLE disbursement_runs (
    run_id        bigserial PRIMARY KEY,
    programme_id  bigint NOT NULL REFERENCES programmes,
    period        text COLLATE "C" NOT NULL,
    state         text NOT NULL CHECK (state IN ('running', 'stopped', 'failed', 'done')),
    -- counters change in the same statement as the items they count
    total         bigint NOT NULL DEFAULT 0,
    credited      bigint NOT NULL DEFAULT 0,
    refused       bigint NOT NULL DEFAULT 0,
    credited_fen  bigint NOT NULL DEFAULT 0,
    error         text NOT NULL DEFAULT '',
    started_at    timestamptz NOT NULL DEFAULT now(),
    resumed_at    timestamptz NOT NULL DEFAULT now(),  -- start of the latest (re)start
    resumed_done  bigint NOT NULL DEFAULT 0,  -- credited + refused at that moment (for the rate)
    updated_at    timestamptz NOT NULL DEFAULT now(),
    finished_at   timestamptz,
    UNIQUE (programme_id, period)
);

-- One row per (programme, period, holder): the unit of the at-most-once promise. The card is
-- fixed when the row is made, so a resent key always reaches the same shard, which answers a
-- repeat from its memory or its journal. Room left in each page (fillfactor) lets marking the
-- result be a HOT update that touches no index.
CREATE TABLE disbursement_items (
    programme_id bigint NOT NULL,
    period       text COLLATE "C" NOT NULL,  -- "C": index comparisons by bytes, not by locale
    holder_id    bigint NOT NULL,
    card_no      bigint,  -- NULL: the holder had no live card when the item was made (refused)
    shard_id     integer,  -- the card's shard, so pages come grouped by shard from Postgres
    amount_fen   bigint NOT NULL,
    state        smallint NOT NULL DEFAULT 0,  -- 0 pending, 1 credited, 2 refused
    result       smallint,  -- the shard's Result; NULL while pending or when refused before sending
    PRIMARY KEY (programme_id, period, holder_id)
) WITH (fillfactor = 60);
