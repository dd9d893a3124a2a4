-- The double-entry ledger: chart of accounts, transactions, append-only entries partitioned by posting date,
-- balances maintained in the same transaction, and the batch posting function the ledger writers call.
--
-- Postgres itself guarantees what the ledger promises, whatever client writes to it:
--   * every ledger transaction has at least two entries and balances per currency (deferred constraint
--     triggers, checked at commit);
--   * entries and transactions are never updated, deleted or truncated;
--   * account_balances move only with entries, in the same transaction, and cannot be edited by hand;
--   * an entry's currency is its account's currency, and its posting date its transaction's (foreign keys);
--   * a (kind, external_ref) pair is posted at most once.

-- Chart of accounts as data. House accounts are the platform's own and get one balance shard per ledger
-- writer (summed on read) so writers never queue on one hot row; merchant accounts live on shard 0 and are
-- only ever written by the writer their merchant hashes to.
CREATE TABLE account_types (
    name        text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    normal_side text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    scope       text NOT NULL CHECK (scope IN ('house', 'merchant')),
    description text NOT NULL
);

INSERT INTO account_types (name, normal_side, scope, description) VALUES
    ('psp_receivable',     'debit',  'house',    'captured at the PSP, not yet settled into our bank'),
    ('bank_cash',          'debit',  'house',    'cash in the platform''s bank account'),
    ('platform_fees',      'credit', 'house',    'fee revenue'),
    ('payouts_in_transit', 'credit', 'house',    'payouts sent to merchants'' banks, not yet confirmed'),
    ('merchant_payable',   'credit', 'merchant', 'what the platform owes the merchant: its available balance'),
    ('dispute_hold',       'credit', 'merchant', 'merchant funds frozen while a dispute is open');

CREATE TABLE accounts (
    id          bigserial PRIMARY KEY,
    name        text NOT NULL REFERENCES account_types (name),
    merchant_id text,
    currency    text NOT NULL CHECK (currency ~ '^[a-z]{3}$'),
    shard       smallint NOT NULL DEFAULT 0 CHECK (shard >= 0),
    normal_side text NOT NULL CHECK (normal_side IN ('debit', 'credit')),
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT accounts_key UNIQUE NULLS NOT DISTINCT (name, merchant_id, currency, shard),
    -- target of the entries' (account_id, currency) foreign key
    CONSTRAINT accounts_id_currency UNIQUE (id, currency)
);
CREATE INDEX accounts_merchant ON accounts (merchant_id, name, currency) WHERE merchant_id IS NOT NULL;

CREATE TABLE ledger_transactions (
    id           text PRIMARY KEY CHECK (id LIKE 'txn\_%'),
    kind         text NOT NULL CHECK (kind ~ '^[a-z][a-z0-9_]*$'),
    external_ref text NOT NULL CHECK (length(external_ref) BETWEEN 1 AND 255),
    merchant_id  text,
    -- md5 of the canonical entries: a repost with the same key but different entries is refused
    fingerprint  text NOT NULL,
    description  text NOT NULL DEFAULT '',
    posted_at    timestamptz NOT NULL DEFAULT now(),
    posting_date date NOT NULL,
    writer_shard smallint,
    CONSTRAINT ledger_transactions_ref UNIQUE (kind, external_ref),
    -- target of the entries' (transaction_id, posting_date) foreign key
    CONSTRAINT ledger_transactions_id_date UNIQUE (id, posting_date)
);
CREATE INDEX ledger_transactions_merchant ON ledger_transactions (merchant_id, posted_at DESC)
    WHERE merchant_id IS NOT NULL;
CREATE INDEX ledger_transactions_day ON ledger_transactions (posting_date, kind);

CREATE TABLE ledger_entries (
    -- assigned from ledger_entries_id_seq by a trigger, never by the client (see ledger_entries_assign_id)
    id             bigint NOT NULL,
    transaction_id text NOT NULL,
    account_id     bigint NOT NULL,
    direction      text NOT NULL CHECK (direction IN ('debit', 'credit')),
    amount         bigint NOT NULL CHECK (amount > 0),
    currency       text NOT NULL,
    posting_date   date NOT NULL,
    PRIMARY KEY (id, posting_date),
    FOREIGN KEY (transaction_id, posting_date) REFERENCES ledger_transactions (id, posting_date),
    FOREIGN KEY (account_id, currency) REFERENCES accounts (id, currency)
) PARTITION BY RANGE (posting_date);
CREATE INDEX ledger_entries_transaction ON ledger_entries (transaction_id);
CREATE INDEX ledger_entries_account ON ledger_entries (account_id, posting_date);

CREATE SEQUENCE ledger_entries_id_seq OWNED BY ledger_entries.id;

-- Dates without a monthly partition (back-dated or far-future postings) land here.
CREATE TABLE ledger_entries_default PARTITION OF ledger_entries DEFAULT;

-- One row per account, updated in the transaction that inserts its entries. Few indexes and free space on
-- each page keep these hot rows' updates HOT.
CREATE TABLE account_balances (
    account_id bigint PRIMARY KEY REFERENCES accounts (id),
    debits     bigint NOT NULL DEFAULT 0 CHECK (debits >= 0),
    credits    bigint NOT NULL DEFAULT 0 CHECK (credits >= 0),
    version    bigint NOT NULL DEFAULT 0 CHECK (version >= 0),
    updated_at timestamptz NOT NULL DEFAULT now()
) WITH (fillfactor = 50);


-- Balance: at least two entries, and debits = credits in every currency. Raised as check_violation.
--
-- The check runs once per ledger transaction rather than once per row. The transaction row's trigger fires
-- first (its row is inserted before its entries), checks every entry present and records, for the rest of
-- the database transaction, "entries of T up to id M balance". An entry's trigger skips the check when its
-- id is within that record: entries are immutable and ids come from a sequence in increasing order, so an
-- entry added to T later has a higher id and is checked again. A subtransaction that rolls back also rolls
-- back its record.
CREATE FUNCTION ledger_assert_balanced(txn_id text, txn_date date) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    n_entries integer;
    last_id   bigint;
    imbalance text;
BEGIN
    SELECT coalesce(sum(n), 0), max(last_entry),
           string_agg(format('%s debits %s credits %s', currency, debits, credits), '; ')
               FILTER (WHERE debits <> credits)
      INTO n_entries, last_id, imbalance
      FROM (SELECT currency,
                   count(*) AS n,
                   max(id) AS last_entry,
                   coalesce(sum(amount) FILTER (WHERE direction = 'debit'), 0) AS debits,
                   coalesce(sum(amount) FILTER (WHERE direction = 'credit'), 0) AS credits
              FROM ledger_entries
             WHERE transaction_id = txn_id AND posting_date = txn_date
             GROUP BY currency) per_currency;
    IF n_entries < 2 THEN
        RAISE EXCEPTION 'ledger transaction % has % entries; at least 2 are required', txn_id, n_entries
            USING ERRCODE = 'check_violation';
    END IF;
    IF imbalance IS NOT NULL THEN
        RAISE EXCEPTION 'ledger transaction % does not balance: %', txn_id, imbalance
            USING ERRCODE = 'check_violation';
    END IF;
    PERFORM set_config('payray.ledger_balanced_upto', last_id || '|' || txn_id, true);
END;
$$;

CREATE FUNCTION ledger_entries_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    memo text := current_setting('payray.ledger_balanced_upto', true);
    sep  integer := position('|' IN coalesce(memo, ''));
BEGIN
    IF sep > 0 AND substr(memo, sep + 1) = NEW.transaction_id
       AND NEW.id <= left(memo, sep - 1)::bigint THEN
        RETURN NULL;
    END IF;
    PERFORM ledger_assert_balanced(NEW.transaction_id, NEW.posting_date);
    RETURN NULL;
END;
$$;

CREATE FUNCTION ledger_transactions_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM ledger_assert_balanced(NEW.id, NEW.posting_date);
    RETURN NULL;
END;
$$;

CREATE FUNCTION ledger_entries_assign_id() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.id IS NOT NULL THEN
        RAISE EXCEPTION 'ledger entry ids are assigned by the ledger, not by the client'
            USING ERRCODE = 'generated_always';
    END IF;
    NEW.id := nextval('ledger_entries_id_seq');
    RETURN NEW;
END;
$$;

CREATE TRIGGER ledger_entries_assign_id
    BEFORE INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_assign_id();

-- Constraint triggers on a partitioned table are cloned onto every partition, present and future.
CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_check_balanced();

-- Catches a transaction with no entries at all, which no entry trigger would see.
CREATE CONSTRAINT TRIGGER ledger_transactions_balanced
    AFTER INSERT ON ledger_transactions
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION ledger_transactions_check_balanced();


-- Append-only: corrections are new, reversing transactions, never edits.
CREATE FUNCTION ledger_refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % refused', TG_TABLE_NAME, TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

-- Row triggers are cloned onto partitions, so a statement aimed at one partition is refused too.
CREATE TRIGGER ledger_entries_append_only
    BEFORE UPDATE OR DELETE ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
-- Statement triggers are not cloned: every partition gets its own TRUNCATE guard (see below).
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_entries_no_truncate
    BEFORE TRUNCATE ON ledger_entries_default
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();

CREATE TRIGGER ledger_transactions_append_only
    BEFORE UPDATE OR DELETE ON ledger_transactions
    FOR EACH ROW EXECUTE FUNCTION ledger_refuse_change();
CREATE TRIGGER ledger_transactions_no_truncate
    BEFORE TRUNCATE ON ledger_transactions
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();


-- Balances follow entries, whoever inserts them, in the same transaction: one row update per entry, except
-- inside ledger_post_batch, which applies a whole batch's movements once per account (and says so).
CREATE FUNCTION ledger_entries_apply_to_balance() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    add_debit  bigint := CASE NEW.direction WHEN 'debit' THEN NEW.amount ELSE 0 END;
    add_credit bigint := CASE NEW.direction WHEN 'credit' THEN NEW.amount ELSE 0 END;
BEGIN
    IF current_setting('payray.balances_by_batch', true) = 'on' THEN
        RETURN NULL;
    END IF;
    UPDATE account_balances
       SET debits = debits + add_debit,
           credits = credits + add_credit,
           version = version + 1,
           updated_at = now()
     WHERE account_id = NEW.account_id;
    IF NOT FOUND THEN
        INSERT INTO account_balances AS b (account_id, debits, credits, version)
        VALUES (NEW.account_id, add_debit, add_credit, 1)
        ON CONFLICT (account_id) DO UPDATE
           SET debits = b.debits + add_debit,
               credits = b.credits + add_credit,
               version = b.version + 1,
               updated_at = now();
    END IF;
    RETURN NULL;
END;
$$;

CREATE TRIGGER ledger_entries_apply_to_balance
    AFTER INSERT ON ledger_entries
    FOR EACH ROW EXECUTE FUNCTION ledger_entries_apply_to_balance();

-- ...and only entries move them: a balance edited by hand would no longer be the sum of its entries.
CREATE FUNCTION account_balances_refuse_direct_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE'
       AND (pg_trigger_depth() > 1 OR current_setting('payray.balances_by_batch', true) = 'on') THEN
        RETURN NEW;  -- from ledger_entries_apply_to_balance or ledger_post_batch
    END IF;
    RAISE EXCEPTION 'account_balances change only through ledger entries: % refused', TG_OP
        USING ERRCODE = 'restrict_violation';
END;
$$;

CREATE TRIGGER account_balances_follow_entries
    BEFORE UPDATE OR DELETE ON account_balances
    FOR EACH ROW EXECUTE FUNCTION account_balances_refuse_direct_change();
CREATE TRIGGER account_balances_no_truncate
    BEFORE TRUNCATE ON account_balances
    FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change();


-- Monthly partitions from the month of from_date through months_ahead months later; returns how many it
-- created. A month whose rows already sit in the default partition is skipped (they cannot be moved: entries
-- are never deleted) and stays served by the default partition. Writers call this at start-up.
CREATE FUNCTION ledger_ensure_partitions(from_date date, months_ahead integer DEFAULT 3) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    month_start date;
    month_end   date;
    part        text;
    created     integer := 0;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtext('ledger_ensure_partitions'));
    FOR i IN 0..months_ahead LOOP
        month_start := (date_trunc('month', from_date) + make_interval(months => i))::date;
        month_end := (month_start + interval '1 month')::date;
        part := format('ledger_entries_%s', to_char(month_start, 'YYYY_MM'));
        CONTINUE WHEN to_regclass(part) IS NOT NULL;
        IF EXISTS (SELECT 1 FROM ledger_entries_default
                    WHERE posting_date >= month_start AND posting_date < month_end) THEN
            RAISE NOTICE 'ledger entries for % already in the default partition; no partition created',
                to_char(month_start, 'YYYY-MM');
            CONTINUE;
        END IF;
        EXECUTE format('CREATE TABLE %I PARTITION OF ledger_entries FOR VALUES FROM (%L) TO (%L)',
                       part, month_start, month_end);
        EXECUTE format('CREATE TRIGGER ledger_entries_no_truncate BEFORE TRUNCATE ON %I '
                       'FOR EACH STATEMENT EXECUTE FUNCTION ledger_refuse_change()', part);
        created := created + 1;
    END LOOP;
    RETURN created;
END;
$$;

SELECT ledger_ensure_partitions(((now() AT TIME ZONE 'UTC') - interval '1 month')::date, 4);


-- The account for (name, merchant, currency) on the shard its scope implies, created with its balance row
-- on first use. House accounts live on the writer's shard, merchant accounts on shard 0.
CREATE FUNCTION ledger_account_id(account_name text, account_merchant text, account_currency text,
                                  writer_shard integer) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    t       account_types%ROWTYPE;
    v_shard smallint;
    v_id    bigint;
BEGIN
    SELECT * INTO t FROM account_types WHERE name = account_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown account %', account_name USING ERRCODE = 'foreign_key_violation';
    END IF;
    IF t.scope = 'house' THEN
        IF account_merchant IS NOT NULL THEN
            RAISE EXCEPTION 'house account % cannot belong to merchant %', account_name, account_merchant
                USING ERRCODE = 'check_violation';
        END IF;
        v_shard := writer_shard;
        SELECT id INTO v_id FROM accounts
         WHERE name = account_name AND merchant_id IS NULL AND currency = account_currency AND shard = v_shard;
    ELSE
        IF account_merchant IS NULL THEN
            RAISE EXCEPTION 'merchant account % needs a merchant', account_name USING ERRCODE = 'check_violation';
        END IF;
        v_shard := 0;
        SELECT id INTO v_id FROM accounts
         WHERE name = account_name AND merchant_id = account_merchant AND currency = account_currency
           AND shard = v_shard;
    END IF;
    IF v_id IS NOT NULL THEN
        RETURN v_id;
    END IF;
    INSERT INTO accounts (name, merchant_id, currency, shard, normal_side)
    VALUES (account_name, account_merchant, account_currency, v_shard, t.normal_side)
    ON CONFLICT ON CONSTRAINT accounts_key DO NOTHING
    RETURNING id INTO v_id;
    IF v_id IS NULL THEN
        -- another connection created it concurrently and has committed
        SELECT id INTO STRICT v_id FROM accounts
         WHERE name = account_name AND merchant_id IS NOT DISTINCT FROM account_merchant
           AND currency = account_currency AND shard = v_shard;
    END IF;
    INSERT INTO account_balances (account_id) VALUES (v_id) ON CONFLICT (account_id) DO NOTHING;
    RETURN v_id;
END;
$$;


-- Post a batch of postings in one call.
--
-- Input: a JSON array of postings
--   {"kind", "external_ref", "merchant_id" (or null), "description", "posting_date" ("YYYY-MM-DD", or null
--    for today in UTC), "require_funds" (bool, optional), "entries": [{"account", "merchant_id" (or null),
--    "currency", "direction", "amount"}, ...]}
-- and the writer's shard, on which its house accounts live.
--
-- Output: one row per posting, in input order:
--   idx               0-based position in the input
--   external_ref      as given
--   transaction_id    the ledger transaction (new or existing); null when the posting was refused
--   created           true only when this call wrote the transaction
--   error_code        null on success; 'idempotency_conflict' (the key was posted with other entries; the
--                     existing transaction_id is returned), 'balance_insufficient' (require_funds and a
--                     merchant_payable balance would go negative), or the SQLSTATE of any other refusal
--   error             a human-readable message, or null
--   merchant_balances {currency: {"account": "merchant_payable", "balance": n, "version": v}} for the
--                     posting's merchant in each currency the posting touches (after it); {} for none;
--                     null on error
--
-- Each posting runs in its own subtransaction and is checked (balance, accounts, amounts, funds) before the
-- next one starts: a bad posting is reported and rolled back alone (the same checks as the deferred triggers,
-- so the batch does not fail at commit). A repost of (kind, external_ref) with the same entries writes nothing
-- and answers the existing transaction with created = false. Transient failures (serialization, deadlock,
-- lock timeout, shutdown, connection) are re-raised so the caller retries the whole batch.
--
-- Balances: each account's balance row is locked at its first posting in the batch and kept running in
-- memory (so funds checks and the returned balances see the batch's earlier postings), then written once at
-- the end. Its version still grows by one per posting that touches it.
CREATE FUNCTION ledger_post_batch(postings jsonb, writer_shard integer)
RETURNS TABLE (idx integer, external_ref text, transaction_id text, created boolean, error_code text,
               error text, merchant_balances jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    p             jsonb;
    p_ord         bigint;
    v_kind        text;
    v_ref         text;
    v_merchant    text;
    v_date        date;
    v_fingerprint text;
    v_existing    text;
    v_txn         text;
    v_stranger    text;
    v_accounts    bigint[];
    v_count       bigint;
    v_imbalance   text;
    v_currencies  text[];
    -- running balances of the accounts this batch touched: account id -> [debits, credits, version]
    v_balances    jsonb := '{}';
    -- the current posting's updates to v_balances, merged in only once the posting has succeeded
    v_touched     jsonb;
    v_held        jsonb;
    d             record;
BEGIN
    IF jsonb_typeof(postings) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'postings must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- this function maintains account_balances itself, once per account per batch (see below)
    PERFORM set_config('payray.balances_by_batch', 'on', true);
    FOR p, p_ord IN SELECT value, ordinality FROM jsonb_array_elements(postings) WITH ORDINALITY LOOP
        idx := p_ord - 1;
        external_ref := p ->> 'external_ref';
        transaction_id := NULL;
        created := false;
        error_code := NULL;
        error := NULL;
        merchant_balances := NULL;
        v_touched := '{}';
        BEGIN
            v_kind := p ->> 'kind';
            v_ref := p ->> 'external_ref';
            v_merchant := p ->> 'merchant_id';
            v_date := coalesce((p ->> 'posting_date')::date, (now() AT TIME ZONE 'UTC')::date);
            IF jsonb_typeof(p -> 'entries') IS DISTINCT FROM 'array' THEN
                RAISE EXCEPTION 'posting % has no entries array', v_ref USING ERRCODE = 'check_violation';
            END IF;
            SELECT x.merchant_id INTO v_stranger
              FROM jsonb_to_recordset(p -> 'entries') AS x(merchant_id text)
             WHERE x.merchant_id IS NOT NULL AND x.merchant_id IS DISTINCT FROM v_merchant
             LIMIT 1;
            IF FOUND THEN
                RAISE EXCEPTION 'posting % for merchant % touches accounts of merchant %',
                    v_ref, v_merchant, v_stranger USING ERRCODE = 'check_violation';
            END IF;
            SELECT md5(coalesce(v_merchant, '') || '|' || coalesce(string_agg(
                       concat_ws(':', x.account, x.merchant_id, x.currency, x.direction, x.amount), ','
                       ORDER BY x.account, x.merchant_id, x.currency, x.direction, x.amount), ''))
              INTO v_fingerprint
              FROM jsonb_to_recordset(p -> 'entries')
                   AS x(account text, merchant_id text, currency text, direction text, amount bigint);

            -- the deferred triggers check again at commit; checking here makes a bad posting fail alone, in
            -- its subtransaction, instead of failing the whole batch at commit
            SELECT coalesce(sum(n), 0),
                   string_agg(format('%s debits %s credits %s', currency, debits, credits), '; ')
                       FILTER (WHERE debits IS DISTINCT FROM credits)
              INTO v_count, v_imbalance
              FROM (SELECT x.currency, count(*) AS n,
                           coalesce(sum(x.amount) FILTER (WHERE x.direction = 'debit'), 0) AS debits,
                           coalesce(sum(x.amount) FILTER (WHERE x.direction = 'credit'), 0) AS credits
                      FROM jsonb_to_recordset(p -> 'entries') AS x(currency text, direction text, amount bigint)
                     GROUP BY x.currency) per_currency;
            IF v_count < 2 THEN
                RAISE EXCEPTION 'posting % has % entries; at least 2 are required', v_ref, v_count
                    USING ERRCODE = 'check_violation';
            END IF;
            IF v_imbalance IS NOT NULL THEN
                RAISE EXCEPTION 'posting % does not balance: %', v_ref, v_imbalance
                    USING ERRCODE = 'check_violation';
            END IF;

            SELECT t.id, t.fingerprint INTO v_txn, v_existing
              FROM ledger_transactions t WHERE t.kind = v_kind AND t.external_ref = v_ref;
            IF NOT FOUND THEN
                INSERT INTO ledger_transactions
                       (id, kind, external_ref, merchant_id, fingerprint, description, posting_date, writer_shard)
                VALUES ('txn_' || replace(gen_random_uuid()::text, '-', ''), v_kind, v_ref, v_merchant,
                        v_fingerprint, coalesce(p ->> 'description', ''), v_date, writer_shard)
                ON CONFLICT ON CONSTRAINT ledger_transactions_ref DO NOTHING
                RETURNING id INTO v_txn;
                IF v_txn IS NULL THEN
                    -- posted concurrently by another connection, which has committed
                    SELECT t.id, t.fingerprint INTO STRICT v_txn, v_existing
                      FROM ledger_transactions t WHERE t.kind = v_kind AND t.external_ref = v_ref;
                ELSE
                    SELECT array_agg(ledger_account_id(e.value ->> 'account', e.value ->> 'merchant_id',
                                                       e.value ->> 'currency', writer_shard) ORDER BY e.ord)
                      INTO v_accounts
                      FROM jsonb_array_elements(p -> 'entries') WITH ORDINALITY AS e(value, ord);
                    INSERT INTO ledger_entries (transaction_id, account_id, direction, amount, currency, posting_date)
                    SELECT v_txn, v_accounts[e.ord], e.value ->> 'direction', (e.value ->> 'amount')::bigint,
                           e.value ->> 'currency', v_date
                      FROM jsonb_array_elements(p -> 'entries') WITH ORDINALITY AS e(value, ord);
                    FOR d IN
                        SELECT a.id, a.name, a.currency,
                               coalesce(sum((e.value ->> 'amount')::bigint)
                                            FILTER (WHERE e.value ->> 'direction' = 'debit'), 0) AS debits,
                               coalesce(sum((e.value ->> 'amount')::bigint)
                                            FILTER (WHERE e.value ->> 'direction' = 'credit'), 0) AS credits
                          FROM jsonb_array_elements(p -> 'entries') WITH ORDINALITY AS e(value, ord)
                          JOIN accounts a ON a.id = v_accounts[e.ord]
                         GROUP BY a.id, a.name, a.currency
                         ORDER BY a.id
                    LOOP
                        v_held := v_balances -> d.id::text;
                        IF v_held IS NULL THEN
                            -- first touch in this batch: lock the row until commit, so the running balance
                            -- kept here stays exact
                            SELECT jsonb_build_array(b.debits, b.credits, b.version) INTO STRICT v_held
                              FROM account_balances b WHERE b.account_id = d.id FOR UPDATE;
                        END IF;
                        v_held := jsonb_build_array((v_held ->> 0)::bigint + d.debits,
                                                    (v_held ->> 1)::bigint + d.credits,
                                                    (v_held ->> 2)::bigint + 1);
                        IF d.name = 'merchant_payable' AND d.debits > d.credits
                           AND coalesce((p ->> 'require_funds')::boolean, false)
                           AND (v_held ->> 1)::bigint < (v_held ->> 0)::bigint THEN
                            RAISE EXCEPTION 'balance_insufficient: % has % % available, % requested', v_merchant,
                                (v_held ->> 1)::bigint - (v_held ->> 0)::bigint + d.debits - d.credits,
                                d.currency, d.debits - d.credits
                                USING ERRCODE = 'PY001';
                        END IF;
                        v_touched := v_touched || jsonb_build_object(d.id::text, v_held);
                    END LOOP;
                    created := true;
                END IF;
            END IF;
            transaction_id := v_txn;
            IF NOT created AND v_existing IS DISTINCT FROM v_fingerprint THEN
                error_code := 'idempotency_conflict';
                error := format('%s %s was already posted as %s with different entries', v_kind, v_ref, v_txn);
            ELSIF v_merchant IS NOT NULL THEN
                SELECT array_agg(DISTINCT x ->> 'currency') INTO v_currencies
                  FROM jsonb_array_elements(p -> 'entries') x;
                SELECT coalesce(jsonb_object_agg(a.currency, jsonb_build_object(
                           'account', a.name,
                           'balance', (cur ->> 1)::bigint - (cur ->> 0)::bigint,
                           'version', (cur ->> 2)::bigint)), '{}'::jsonb)
                  INTO merchant_balances
                  FROM accounts a
                  JOIN account_balances b ON b.account_id = a.id
                 CROSS JOIN LATERAL coalesce(v_touched -> a.id::text, v_balances -> a.id::text,
                                             jsonb_build_array(b.debits, b.credits, b.version)) AS cur
                 WHERE a.name = 'merchant_payable' AND a.merchant_id = v_merchant AND a.shard = 0
                   AND a.currency = ANY (v_currencies);
            ELSE
                merchant_balances := '{}'::jsonb;
            END IF;
            -- last statement of the block: nothing after it can fail and roll the posting back
            v_balances := v_balances || v_touched;
        EXCEPTION WHEN OTHERS THEN
            IF left(SQLSTATE, 2) IN ('08', '40', '53', '55', '57', '58', 'XX') THEN
                RAISE;
            END IF;
            transaction_id := NULL;
            created := false;
            merchant_balances := NULL;
            error_code := CASE SQLSTATE WHEN 'PY001' THEN 'balance_insufficient' ELSE SQLSTATE END;
            error := SQLERRM;
        END;
        RETURN NEXT;
    END LOOP;
    -- one update per account per batch: a house account touched by every posting would otherwise be updated
    -- (and copied) once per posting, and each update would walk all of the batch's earlier row versions
    UPDATE account_balances b
       SET debits = (x.value ->> 0)::bigint,
           credits = (x.value ->> 1)::bigint,
           version = (x.value ->> 2)::bigint,
           updated_at = now()
      FROM jsonb_each(v_balances) x
     WHERE b.account_id = x.key::bigint;
    PERFORM set_config('payray.balances_by_batch', 'off', true);
END;
$$;
