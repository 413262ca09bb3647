-- Other issuers' cards sold offline in this city (issue 15 item 2; docs/clearing.md, "Visitors'
-- cards sold offline"). This host has none of their keys: it does not check their TACs nor
-- journal them as money; it keeps each record once by (card, offline counter), the key the
-- card made, and sends it to the card's issuer in its clearing file (clearing_export.py), which
-- checks the TAC and may charge it back. Append-only.
CREATE TABLE offline_visitor_records (
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
    batch_seq         bigint NOT NULL,       -- the upload that brought it (terminal_id's)
    received_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (card_no, offline_counter)
);
CREATE INDEX offline_visitor_records_by_time ON offline_visitor_records USING brin (received_at);
