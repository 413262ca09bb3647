-- Issue 15: the region in the city's own books (docs/settlement.md, docs/clearing.md "The
-- city's books"). Money columns are integer fen. Grants: persistence/roles.py grant_app.

-- Settlement lines: of the online and offline fen, how much came from visitors' cards (other
-- issuers'): the operator is paid for them like any ride; the city collects from the issuer
-- through clearing. online_fen + offline_fen = gross_fen still holds (0008's check).
ALTER TABLE settlement_lines
    ADD COLUMN visitor_online_fen  bigint NOT NULL DEFAULT 0 CHECK (visitor_online_fen >= 0),
    ADD COLUMN visitor_offline_fen bigint NOT NULL DEFAULT 0 CHECK (visitor_offline_fen >= 0),
    ADD CONSTRAINT settlement_lines_visitors_within
        CHECK (visitor_online_fen <= online_fen AND visitor_offline_fen <= offline_fen);

-- The clearing house's closed report of a window, as it concerns this city: its statement,
-- imported once (a second import of the same report changes nothing; another report is refused).
CREATE TABLE clearing_books (
    window_id                text PRIMARY KEY CHECK (window_id ~ '^[0-9]{4}-[0-9]{2}-[0-9]{2}$'),
    city                     text NOT NULL,
    receivable_gross_fen     bigint NOT NULL,  -- as acquirer: what issuers owe it, before fees
    receivable_records       bigint NOT NULL,
    acquirer_fees_fen        bigint NOT NULL,  -- the interchange it bears
    payable_gross_fen        bigint NOT NULL,  -- as issuer: what it owes acquirers, before fees
    payable_records          bigint NOT NULL,
    issuer_fees_fen          bigint NOT NULL,  -- the interchange it keeps
    chargebacks_received_fen bigint NOT NULL,  -- as issuer: returned to it
    chargebacks_paid_fen     bigint NOT NULL,  -- as acquirer: its loss (it paid its operators)
    net_fen                  bigint NOT NULL,  -- its multilateral position: > 0 it receives
    sent_records             bigint NOT NULL,  -- its own clearing export of the window
    sent_fen                 bigint NOT NULL,
    report_sha256            text NOT NULL,    -- of the report imported (canonical JSON)
    imported_at              timestamptz NOT NULL DEFAULT now()
);

-- Each chargeback of the report that concerns this city, with the issuer's reason. As acquirer
-- it is a loss line: the terminal's operator was paid for the ride (settlement_lines are never
-- changed by it). A record is charged back once in the region.
CREATE TABLE clearing_chargebacks (
    record_id       text PRIMARY KEY,
    window_id       text NOT NULL REFERENCES clearing_books,  -- the window whose close carried it
    role            text NOT NULL CHECK (role IN ('acquirer', 'issuer')),
    issuer          text NOT NULL,
    acquirer        text NOT NULL,
    amount_fen      bigint NOT NULL CHECK (amount_fen >= 0),  -- the record's gross
    reason          text NOT NULL,
    terminal_id     bigint,          -- from the record id (acquirer:terminal:seq)
    terminal_seq    bigint,
    counterparty_id text             -- acquirer side: the operator paid for the ride, if attached
);
CREATE INDEX clearing_chargebacks_by_window ON clearing_chargebacks (window_id);

-- What the city's own books and the house's figures disagree on (written with the import).
CREATE TABLE clearing_discrepancies (
    window_id      text NOT NULL REFERENCES clearing_books,
    what           text NOT NULL,
    record_id      text,
    expected_fen   bigint NOT NULL DEFAULT 0,  -- the city's own books
    found_fen      bigint NOT NULL DEFAULT 0,  -- the house's figures
    expected_count bigint NOT NULL DEFAULT 0,
    found_count    bigint NOT NULL DEFAULT 0,
    detail         text NOT NULL DEFAULT ''
);
CREATE INDEX clearing_discrepancies_by_window ON clearing_discrepancies (window_id);
