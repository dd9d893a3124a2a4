-- Set-based batch posting. ledger_post_batch used to write a batch one posting at a time (a subtransaction,
-- three account lookups, a balance lock and a balance read per posting: ~20 statements per posting). It now
-- writes the whole batch with a handful of set-based statements and keeps the posting-at-a-time path, renamed
-- ledger_post_batch_each, for the batches that need it: one with a posting that is refused (malformed,
-- unbalanced, a conflicting repost, an overdraft under require_funds), a (kind, external_ref) twice, or a
-- race with another writer. Same input, same output, same guarantees (see 0002_ledger.sql).

ALTER FUNCTION ledger_post_batch(jsonb, integer) RENAME TO ledger_post_batch_each;

-- A batch's postings and entries, parsed once and carried between the statements of
-- ledger_post_batch_at_once.
CREATE TYPE ledger_batch_posting AS (
    idx            integer,
    kind           text,
    external_ref   text,
    merchant_id    text,
    description    text,
    posting_date   date,
    require_funds  boolean,
    fingerprint    text,
    transaction_id text,
    created        boolean
);

CREATE TYPE ledger_batch_entry AS (
    idx         integer,
    ord         integer,
    account     text,
    merchant_id text,
    currency    text,
    direction   text,
    amount      bigint,
    account_id  bigint
);

-- The transaction's own deferred check only has to catch a transaction without entries: when it has any,
-- each of them fires ledger_entries_balanced, which checks the whole transaction. Checking here as well
-- would check every transaction twice (a batch inserts all its transactions before any of their entries,
-- so the entries' "checked up to" memo would always name another transaction).
CREATE OR REPLACE FUNCTION ledger_transactions_check_balanced() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM ledger_entries e
     WHERE e.transaction_id = NEW.id AND e.posting_date = NEW.posting_date
     LIMIT 1;
    IF NOT FOUND THEN
        PERFORM ledger_assert_balanced(NEW.id, NEW.posting_date);
    END IF;
    RETURN NULL;
END;
$$;

-- Per-row triggers that a set-based batch does not need are not even queued for its rows: a trigger's WHEN
-- condition is evaluated in the executor, without calling PL/pgSQL. ledger_post_batch_at_once checks its
-- postings' balance itself before inserting them (set-based, the same rule) and moves account_balances once
-- per account; it raises these two flags only around its own inserts, and its transactions are new, so no
-- other entry of theirs escapes the deferred check. Like payray.balances_by_batch before them, the flags are
-- the writer's: a client with INSERT on the ledger tables that sets them bypasses the ledger (production
-- grants EXECUTE on ledger_post_batch, not INSERT).
DROP TRIGGER ledger_entries_apply_to_balance ON ledger_entries;
CREATE TRIGGER ledger_entries_apply_to_balance
    AFTER INSERT ON ledger_entries
    FOR EACH ROW
    WHEN (current_setting('payray.balances_by_batch', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_entries_apply_to_balance();

DROP TRIGGER ledger_entries_balanced ON ledger_entries;
CREATE CONSTRAINT TRIGGER ledger_entries_balanced
    AFTER INSERT ON ledger_entries
    DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW
    WHEN (current_setting('payray.entries_checked_by_batch', true) IS DISTINCT FROM 'on')
    EXECUTE FUNCTION ledger_entries_check_balanced();

-- Raised by ledger_post_batch_at_once when the batch must go posting by posting; never leaves the ledger.
-- SQLSTATE PY002.
CREATE TYPE ledger_batch_balance AS (
    idx        integer,
    account_id bigint,
    currency   text,
    name       text,
    reported   boolean,  -- a row the posting reports (its merchant's payable), not one it moves
    debits     bigint,
    credits    bigint,
    version    bigint
);

-- Every statement below is linear in the batch (hash joins and group-bys, no per-posting subqueries).
CREATE FUNCTION ledger_post_batch_at_once(postings jsonb, writer_shard integer)
RETURNS TABLE (idx integer, external_ref text, transaction_id text, created boolean, error_code text,
               error text, merchant_balances jsonb)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    v_postings   ledger_batch_posting[];
    v_entries    ledger_batch_entry[];
    v_running    ledger_batch_balance[];
    v_reason     text;
BEGIN
    -- a malformed entry (not an object, a non-integer amount, entries not an array) raises here
    SELECT array_agg(ROW(p.ord - 1, e.ord, x.account, x.merchant_id, x.currency, x.direction, x.amount, NULL)
                     ::ledger_batch_entry ORDER BY p.ord, e.ord)
      INTO v_entries
      FROM jsonb_array_elements(postings) WITH ORDINALITY AS p(doc, ord)
     CROSS JOIN LATERAL jsonb_array_elements(p.doc -> 'entries') WITH ORDINALITY AS e(value, ord)
     CROSS JOIN LATERAL jsonb_to_record(e.value)
           AS x(account text, merchant_id text, currency text, direction text, amount bigint);

    -- the checks the posting-at-a-time path makes before writing, plus the cases it handles alone
    -- (conflicting reposts, a key twice in the batch)
    WITH docs AS (
        SELECT p.ord::integer - 1 AS idx, p.doc FROM jsonb_array_elements(postings) WITH ORDINALITY AS p(doc, ord)
    ), per_currency AS (
        SELECT e.idx, count(*) AS n,
               coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0)
                   <> coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0) AS unbalanced
          FROM unnest(v_entries) e
         GROUP BY e.idx, e.currency
    ), per_posting AS (
        SELECT c.idx, sum(c.n) AS n, bool_or(c.unbalanced) AS unbalanced FROM per_currency c GROUP BY c.idx
    ), strangers AS (
        SELECT DISTINCT e.idx FROM unnest(v_entries) e JOIN docs d ON d.idx = e.idx
         WHERE e.merchant_id IS NOT NULL AND e.merchant_id IS DISTINCT FROM d.doc ->> 'merchant_id'
    ), fingerprints AS (
        SELECT d.idx, md5(coalesce(d.doc ->> 'merchant_id', '') || '|' || coalesce(string_agg(
                   concat_ws(':', e.account, e.merchant_id, e.currency, e.direction, e.amount), ','
                   ORDER BY e.account, e.merchant_id, e.currency, e.direction, e.amount), '')) AS fingerprint
          FROM docs d JOIN unnest(v_entries) e ON e.idx = d.idx
         GROUP BY d.idx, d.doc
    ), checked AS (
        SELECT d.idx, d.doc, f.fingerprint, t.id AS existing, t.fingerprint AS existing_fingerprint,
               CASE
                   WHEN coalesce(pp.n, 0) < 2 THEN 'fewer than 2 entries'
                   WHEN pp.unbalanced THEN 'unbalanced'
                   WHEN s.idx IS NOT NULL THEN 'another merchant''s account'
                   WHEN t.fingerprint IS DISTINCT FROM f.fingerprint AND t.id IS NOT NULL THEN 'conflicting repost'
                   WHEN count(*) OVER (PARTITION BY d.doc ->> 'kind', d.doc ->> 'external_ref') > 1
                       THEN 'key repeated in the batch'
               END AS problem
          FROM docs d
          LEFT JOIN per_posting pp ON pp.idx = d.idx
          LEFT JOIN strangers s ON s.idx = d.idx
          LEFT JOIN fingerprints f ON f.idx = d.idx
          LEFT JOIN ledger_transactions t
                 ON t.kind = d.doc ->> 'kind' AND t.external_ref = d.doc ->> 'external_ref'
    )
    SELECT array_agg(ROW(c.idx, c.doc ->> 'kind', c.doc ->> 'external_ref', c.doc ->> 'merchant_id',
                         coalesce(c.doc ->> 'description', ''),
                         coalesce((c.doc ->> 'posting_date')::date, (now() AT TIME ZONE 'UTC')::date),
                         coalesce((c.doc ->> 'require_funds')::boolean, false), c.fingerprint,
                         coalesce(c.existing, 'txn_' || replace(gen_random_uuid()::text, '-', '')),
                         c.existing IS NULL)::ledger_batch_posting ORDER BY c.idx),
           string_agg(format('posting %s: %s', c.idx, c.problem), '; ') FILTER (WHERE c.problem IS NOT NULL)
      INTO v_postings, v_reason
      FROM checked c;
    IF v_reason IS NOT NULL THEN
        RAISE EXCEPTION 'batch goes posting by posting: %', v_reason USING ERRCODE = 'PY002';
    END IF;

    -- accounts: one indexed lookup per distinct account of the batch; ledger_account_id only for a missing
    -- one (it creates it, or refuses an unknown name or a scope mismatch)
    WITH wanted AS (
        SELECT DISTINCT e.account, e.merchant_id, e.currency FROM unnest(v_entries) e
    ), resolved AS (
        SELECT w.account, w.merchant_id, w.currency,
               coalesce(CASE
                            WHEN at.scope = 'house' AND w.merchant_id IS NULL THEN
                                (SELECT a.id FROM accounts a
                                  WHERE a.name = w.account AND a.merchant_id IS NULL
                                    AND a.currency = w.currency AND a.shard = writer_shard)
                            WHEN at.scope = 'merchant' AND w.merchant_id IS NOT NULL THEN
                                (SELECT a.id FROM accounts a
                                  WHERE a.name = w.account AND a.merchant_id = w.merchant_id
                                    AND a.currency = w.currency AND a.shard = 0)
                        END,
                        ledger_account_id(w.account, w.merchant_id, w.currency, writer_shard)) AS account_id
          FROM wanted w
          LEFT JOIN account_types at ON at.name = w.account
    ), matched AS (
        -- two equi-joins rather than one IS NOT DISTINCT FROM join, which could not be hashed
        SELECT e.idx, e.ord, e.account, e.merchant_id, e.currency, e.direction, e.amount, r.account_id
          FROM unnest(v_entries) e
          JOIN resolved r ON r.account = e.account AND r.currency = e.currency AND r.merchant_id = e.merchant_id
        UNION ALL
        SELECT e.idx, e.ord, e.account, e.merchant_id, e.currency, e.direction, e.amount, r.account_id
          FROM unnest(v_entries) e
          JOIN resolved r ON r.account = e.account AND r.currency = e.currency
                         AND r.merchant_id IS NULL AND e.merchant_id IS NULL
    )
    SELECT array_agg(ROW(m.idx, m.ord, m.account, m.merchant_id, m.currency, m.direction, m.amount, m.account_id)
                     ::ledger_batch_entry ORDER BY m.idx, m.ord)
      INTO v_entries
      FROM matched m;

    -- every balance row the batch moves, locked in account order (as every writer does) until commit
    INSERT INTO account_balances (account_id)
    SELECT DISTINCT e.account_id
      FROM unnest(v_entries) e JOIN unnest(v_postings) p ON p.idx = e.idx AND p.created
    ON CONFLICT (account_id) DO NOTHING;
    PERFORM 1 FROM account_balances b
     WHERE b.account_id IN (SELECT e.account_id
                              FROM unnest(v_entries) e JOIN unnest(v_postings) p ON p.idx = e.idx AND p.created)
     ORDER BY b.account_id
       FOR UPDATE;

    -- running balances: each account's debits, credits and version right after each posting that moves it,
    -- and the merchant's payable balance right after each posting that reports it
    WITH moves AS (
        SELECT e.idx, e.account_id,
               coalesce(sum(e.amount) FILTER (WHERE e.direction = 'debit'), 0) AS debits,
               coalesce(sum(e.amount) FILTER (WHERE e.direction = 'credit'), 0) AS credits
          FROM unnest(v_entries) e JOIN unnest(v_postings) p ON p.idx = e.idx AND p.created
         GROUP BY e.idx, e.account_id
    ), reported AS MATERIALIZED (
        SELECT DISTINCT p.idx, p.merchant_id, e.currency
          FROM unnest(v_postings) p JOIN unnest(v_entries) e ON e.idx = p.idx
         WHERE p.merchant_id IS NOT NULL
    ), reports AS (
        SELECT x.idx, a.id AS account_id
          FROM reported x
          JOIN accounts a ON a.name = 'merchant_payable' AND a.merchant_id = x.merchant_id
                         AND a.currency = x.currency AND a.shard = 0
    ), rows AS (
        SELECT m.idx, m.account_id, false AS reported, m.debits, m.credits, 1 AS moved FROM moves m
        UNION ALL
        SELECT r.idx, r.account_id, true, 0, 0, 0 FROM reports r
    )
    SELECT array_agg(ROW(r.idx, r.account_id, r.currency, r.name, r.reported, r.debits, r.credits, r.version)
                     ::ledger_batch_balance)
      INTO v_running
      FROM (SELECT r.idx, r.account_id, a.currency, a.name, r.reported,
                   b.debits + sum(r.debits) OVER w AS debits, b.credits + sum(r.credits) OVER w AS credits,
                   b.version + sum(r.moved) OVER w AS version
              FROM rows r
              JOIN accounts a ON a.id = r.account_id
              JOIN account_balances b ON b.account_id = r.account_id
            WINDOW w AS (PARTITION BY r.account_id ORDER BY r.idx, r.reported)) r;

    SELECT string_agg(format('posting %s overdraws %s', r.idx, r.currency), '; ')
      INTO v_reason
      FROM unnest(v_running) r
      JOIN unnest(v_postings) p ON p.idx = r.idx AND p.require_funds
     WHERE NOT r.reported AND r.name = 'merchant_payable' AND r.credits < r.debits;
    IF v_reason IS NOT NULL THEN
        RAISE EXCEPTION 'batch goes posting by posting: %', v_reason USING ERRCODE = 'PY002';
    END IF;

    -- this function moves account_balances itself, once per account (the entries' row trigger stands down)
    PERFORM set_config('payray.balances_by_batch', 'on', true),
            set_config('payray.entries_checked_by_batch', 'on', true);
    INSERT INTO ledger_transactions
           (id, kind, external_ref, merchant_id, fingerprint, description, posting_date, writer_shard)
    SELECT p.transaction_id, p.kind, p.external_ref, p.merchant_id, p.fingerprint, p.description,
           p.posting_date, writer_shard
      FROM unnest(v_postings) p
     WHERE p.created
     ORDER BY p.idx;
    INSERT INTO ledger_entries (transaction_id, account_id, direction, amount, currency, posting_date)
    SELECT p.transaction_id, e.account_id, e.direction, e.amount, e.currency, p.posting_date
      FROM unnest(v_entries) e
      JOIN unnest(v_postings) p ON p.idx = e.idx AND p.created
     ORDER BY e.idx, e.ord;
    UPDATE account_balances b
       SET debits = last.debits, credits = last.credits, version = last.version, updated_at = now()
      FROM (SELECT DISTINCT ON (r.account_id) r.account_id, r.debits, r.credits, r.version
              FROM unnest(v_running) r
             WHERE NOT r.reported
             ORDER BY r.account_id, r.idx DESC) last
     WHERE b.account_id = last.account_id;
    PERFORM set_config('payray.balances_by_batch', 'off', true),
            set_config('payray.entries_checked_by_batch', 'off', true);

    RETURN QUERY
    SELECT p.idx, p.external_ref, p.transaction_id, p.created, NULL::text, NULL::text,
           coalesce(m.balances, '{}'::jsonb)
      FROM unnest(v_postings) p
      LEFT JOIN (SELECT r.idx, jsonb_object_agg(r.currency, jsonb_build_object(
                            'account', r.name, 'balance', r.credits - r.debits, 'version', r.version)) AS balances
                   FROM unnest(v_running) r
                  WHERE r.reported
                  GROUP BY r.idx) m ON m.idx = p.idx
     ORDER BY p.idx;
END;
$$;

-- Post a batch: at once when it can be (ledger_post_batch_at_once), posting by posting when it must
-- (ledger_post_batch_each). Input and output as documented for ledger_post_batch in 0002_ledger.sql.
CREATE FUNCTION ledger_post_batch(postings jsonb, writer_shard integer)
RETURNS TABLE (idx integer, external_ref text, transaction_id text, created boolean, error_code text,
               error text, merchant_balances jsonb)
LANGUAGE plpgsql AS $$
BEGIN
    IF jsonb_typeof(postings) IS DISTINCT FROM 'array' THEN
        RAISE EXCEPTION 'postings must be a JSON array' USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- below four postings the set-based path's fixed cost (~1 ms) outweighs what it saves per posting
    IF jsonb_array_length(postings) < 4 THEN
        RETURN QUERY SELECT * FROM ledger_post_batch_each(postings, writer_shard);
        RETURN;
    END IF;
    BEGIN
        -- materialized in full before anything is returned: if it fails, nothing of it is kept
        RETURN QUERY SELECT * FROM ledger_post_batch_at_once(postings, writer_shard);
        RETURN;
    EXCEPTION WHEN OTHERS THEN
        IF left(SQLSTATE, 2) IN ('08', '40', '53', '55', '57', '58', 'XX') THEN
            RAISE;
        END IF;
    END;
    RETURN QUERY SELECT * FROM ledger_post_batch_each(postings, writer_shard);
END;
$$;
