-- Budget caps. A call admitted under a cap reserves its worst-case cost on its item until its
-- outcome is recorded; per-tenant sums of reservations and of daily spend are kept by triggers, so
-- every path that settles an item (answer, retry, crash recovery, batch result, cancel) releases
-- its reservation, and admission reads two small rows instead of summing the ledger.

ALTER TABLE items ADD COLUMN reserved_micro_usd INTEGER NOT NULL DEFAULT 0;
-- The model the item asked for, when a budget cap downgraded it (items.model is the one used).
ALTER TABLE items ADD COLUMN downgraded_from TEXT;

-- Settled spend and tokens per tenant and UTC day, from the ledger (budgets and metrics read it).
CREATE TABLE tenant_days (
    tenant                      TEXT    NOT NULL,
    day                         TEXT    NOT NULL,     -- YYYY-MM-DD, UTC
    spent_micro_usd             INTEGER NOT NULL,
    requests                    INTEGER NOT NULL,
    input_tokens                INTEGER NOT NULL,
    output_tokens               INTEGER NOT NULL,
    cache_creation_input_tokens INTEGER NOT NULL,
    cache_read_input_tokens     INTEGER NOT NULL,
    PRIMARY KEY (tenant, day)
) WITHOUT ROWID;

INSERT INTO tenant_days
    SELECT tenant, strftime('%Y-%m-%d', at / 1000, 'unixepoch'), COALESCE(SUM(cost_micro_usd), 0), COUNT(*),
           SUM(input_tokens), SUM(output_tokens), SUM(cache_creation_input_tokens), SUM(cache_read_input_tokens)
    FROM ledger GROUP BY 1, 2;

CREATE TRIGGER ledger_rolls_up AFTER INSERT ON ledger
BEGIN
    INSERT INTO tenant_days
    VALUES (new.tenant, strftime('%Y-%m-%d', new.at / 1000, 'unixepoch'), COALESCE(new.cost_micro_usd, 0), 1,
            new.input_tokens, new.output_tokens, new.cache_creation_input_tokens, new.cache_read_input_tokens)
    ON CONFLICT (tenant, day) DO UPDATE SET
        spent_micro_usd = spent_micro_usd + excluded.spent_micro_usd,
        requests = requests + 1,
        input_tokens = input_tokens + excluded.input_tokens,
        output_tokens = output_tokens + excluded.output_tokens,
        cache_creation_input_tokens = cache_creation_input_tokens + excluded.cache_creation_input_tokens,
        cache_read_input_tokens = cache_read_input_tokens + excluded.cache_read_input_tokens;
END;

-- Worst cases of admitted, unsettled calls per tenant.
CREATE TABLE tenant_reserved (
    tenant             TEXT    PRIMARY KEY,
    reserved_micro_usd INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TRIGGER reservation_sums AFTER UPDATE OF reserved_micro_usd ON items
WHEN new.reserved_micro_usd != old.reserved_micro_usd
BEGIN
    INSERT INTO tenant_reserved (tenant, reserved_micro_usd)
    VALUES (new.tenant, new.reserved_micro_usd - old.reserved_micro_usd)
    ON CONFLICT (tenant) DO UPDATE SET
        reserved_micro_usd = reserved_micro_usd + excluded.reserved_micro_usd;
END;

-- Leaving in_flight, whatever the path, settles the reservation.
CREATE TRIGGER reservation_settles AFTER UPDATE OF state ON items
WHEN old.state = 'in_flight' AND new.state != 'in_flight' AND new.reserved_micro_usd != 0
BEGIN
    UPDATE items SET reserved_micro_usd = 0 WHERE id = new.id;
END;
