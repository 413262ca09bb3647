-- Issue 15 item 1: settlement inside a city (docs/settlement.md). Money columns are integer fen.
-- The app role's grants come from persistence/roles.py grant_app (every table of the schema).

-- Who the card system pays: operators (bus companies, bikes, parking, ...) and merchants.
CREATE TABLE counterparties (
    counterparty_id text PRIMARY KEY CHECK (counterparty_id ~ '^[a-z0-9][a-z0-9_-]{0,39}$'),
    kind            text NOT NULL CHECK (kind IN ('operator', 'merchant')),
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    commission_bp   integer NOT NULL CHECK (commission_bp BETWEEN 0 AND 10000),  -- the card system keeps it
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- Which counterparty a terminal's taps are owed to: one each (a terminal is never shared).
CREATE TABLE terminal_counterparty (
    terminal_id     bigint PRIMARY KEY,
    counterparty_id text NOT NULL REFERENCES counterparties,
    attached_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX terminal_counterparty_by_cp ON terminal_counterparty (counterparty_id);

-- A window books the journal's taps applied in [start_ms, end_ms) and the offline records
-- received in it; open -> closed (lines computed, in one transaction) -> settled (paid).
CREATE TABLE settlement_windows (
    window_id  text PRIMARY KEY CHECK (window_id ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    start_ms   bigint NOT NULL,
    end_ms     bigint NOT NULL CHECK (end_ms > start_ms),
    state      text NOT NULL DEFAULT 'open' CHECK (state IN ('open', 'closed', 'settled')),
    closed_at  timestamptz,
    settled_at timestamptz
);

CREATE TABLE settlement_lines (
    window_id       text NOT NULL REFERENCES settlement_windows,
    counterparty_id text NOT NULL REFERENCES counterparties,
    taps            bigint NOT NULL CHECK (taps >= 0),
    gross_fen       bigint NOT NULL CHECK (gross_fen >= 0),
    commission_fen  bigint NOT NULL CHECK (commission_fen >= 0),
    net_fen         bigint NOT NULL CHECK (net_fen >= 0),
    online_fen      bigint NOT NULL CHECK (online_fen >= 0),
    offline_fen     bigint NOT NULL CHECK (offline_fen >= 0),
    CHECK (commission_fen + net_fen = gross_fen AND online_fen + offline_fen = gross_fen),
    PRIMARY KEY (window_id, counterparty_id)
);

-- What reconciliation found that does not agree (rewritten with the window's lines).
CREATE TABLE settlement_discrepancies (
    window_id       text NOT NULL REFERENCES settlement_windows,
    counterparty_id text,   -- NULL: no counterparty (e.g. a terminal attached to none)
    terminal_id     bigint, -- NULL: not about one terminal
    what            text NOT NULL,
    expected_fen    bigint NOT NULL DEFAULT 0,
    found_fen       bigint NOT NULL DEFAULT 0,
    expected_count  bigint NOT NULL DEFAULT 0,
    found_count     bigint NOT NULL DEFAULT 0,
    detail          text NOT NULL DEFAULT ''
);
CREATE INDEX settlement_discrepancies_by_window ON settlement_discrepancies (window_id);

-- The bus-subsidy basis: concession value (the adult card fare less what was charged) of the
-- concession categories' rides, by operator, route, population group (cards.category) and day.
CREATE TABLE subsidy_basis (
    window_id       text NOT NULL REFERENCES settlement_windows,
    counterparty_id text NOT NULL REFERENCES counterparties,
    kind            smallint NOT NULL,
    route           integer NOT NULL,
    category        smallint NOT NULL,
    day             date NOT NULL,
    taps            bigint NOT NULL CHECK (taps >= 0),
    full_fen        bigint NOT NULL CHECK (full_fen >= 0),
    charged_fen     bigint NOT NULL CHECK (charged_fen >= 0),
    concession_fen  bigint NOT NULL CHECK (concession_fen >= 0),
    PRIMARY KEY (window_id, counterparty_id, kind, route, category, day)
);
