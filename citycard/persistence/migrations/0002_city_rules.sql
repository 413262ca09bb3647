-- The city's rules: purses, applications, products on cards; per-purse movements in the journal.

ALTER TABLE cards
    ADD COLUMN apps                integer NOT NULL DEFAULT 3,  -- App flags: e-purse, online
    ADD COLUMN credit_good         boolean NOT NULL DEFAULT true,
    ADD COLUMN insurance           text NOT NULL DEFAULT '',
    ADD COLUMN medical_from_purse  boolean NOT NULL DEFAULT false,
    ADD COLUMN monthly_pass_from   bigint,  -- validity [from, until) in epoch ms
    ADD COLUMN monthly_pass_until  bigint,
    ADD COLUMN park_pass_from      bigint,
    ADD COLUMN park_pass_until     bigint,
    ADD COLUMN voucher_until_ms    bigint NOT NULL DEFAULT 0,
    ADD COLUMN voucher_categories  text[] NOT NULL DEFAULT '{}',
    ADD COLUMN allowance_until_ms  bigint NOT NULL DEFAULT 0,
    ADD COLUMN opening_general_fen   bigint NOT NULL DEFAULT 0 CHECK (opening_general_fen >= 0),
    ADD COLUMN opening_voucher_fen   bigint NOT NULL DEFAULT 0 CHECK (opening_voucher_fen >= 0),
    ADD COLUMN opening_allowance_fen bigint NOT NULL DEFAULT 0 CHECK (opening_allowance_fen >= 0),
    ADD COLUMN opening_medical_fen   bigint NOT NULL DEFAULT 0 CHECK (opening_medical_fen >= 0);

ALTER TABLE journal
    ADD COLUMN request_fen  bigint NOT NULL DEFAULT 0,
    ADD COLUMN bill_class   smallint NOT NULL DEFAULT 0,
    ADD COLUMN fund_fen     bigint NOT NULL DEFAULT 0,
    ADD COLUMN fare_version integer NOT NULL DEFAULT 0,
    ADD COLUMN concession   smallint NOT NULL DEFAULT -1,
    ADD COLUMN d_epurse     bigint NOT NULL DEFAULT 0,
    ADD COLUMN d_general    bigint NOT NULL DEFAULT 0,
    ADD COLUMN d_voucher    bigint NOT NULL DEFAULT 0,
    ADD COLUMN d_allowance  bigint NOT NULL DEFAULT 0,
    ADD COLUMN d_medical    bigint NOT NULL DEFAULT 0,
    ADD COLUMN d_deposit    bigint NOT NULL DEFAULT 0;

ALTER TABLE snapshot_cards ADD COLUMN state bytea;
