-- Issue 15 item 1: merchants of the merchant alliance, registered through card services
-- (docs/api.md "Merchants", docs/settlement.md "Merchants"). A merchant is a settlement
-- counterparty of kind 'merchant' (its contract commission lives there) and rule data the
-- shards load: its member discount, effective-dated, never changed once written.

CREATE TABLE merchants (
    merchant_id     integer PRIMARY KEY CHECK (merchant_id > 0),  -- the route its POS terminals send
    counterparty_id text NOT NULL UNIQUE REFERENCES counterparties,
    name            text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    category        text NOT NULL CHECK (category ~ '^[a-z0-9_]{1,40}$'),
    registered_ms   bigint NOT NULL,  -- its first terms take effect then
    registered_by   text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now()
);

-- The member discount from each effective time on; a change is a new row from a later time.
CREATE TABLE merchant_discounts (
    merchant_id             integer NOT NULL REFERENCES merchants,
    effective_from_ms       bigint NOT NULL,
    member_discount_percent smallint NOT NULL CHECK (member_discount_percent BETWEEN 0 AND 100),
    set_by                  text NOT NULL,
    set_at                  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (merchant_id, effective_from_ms)
);
