// Stripe's Node SDK, unchanged, as a merchant's backend uses it, against a running payray stack.
//
//   node checks.mjs <base-url> <merchant-key> [check ...]
//
// Runs each named check (all of them by default) and prints one JSON line per check:
// {"check": name, "ok": true} or {"check": name, "ok": false, "error": "..."}. Exits 0 once all have run.

import assert from "node:assert/strict";
import { createServer } from "node:http";
import Stripe from "stripe";

const [baseUrl, apiKey, ...only] = process.argv.slice(2);
const url = new URL(baseUrl);
const stripe = new Stripe(apiKey, {
  host: url.hostname,
  port: Number(url.port),
  protocol: url.protocol.replace(":", ""),
  maxNetworkRetries: 2,
});

const card = { currency: "usd", payment_method: "pm_card_visa" };
const unique = (label) => `${label}-${process.pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;

async function rejects(promise, type, fields = {}) {
  try {
    await promise;
  } catch (error) {
    assert.equal(error.type, type, `${error.type}: ${error.message}`);
    for (const [name, value] of Object.entries(fields)) assert.equal(error[name], value, name);
    return error;
  }
  assert.fail(`expected ${type}`);
}

const checks = {
  async charges_create_retrieve_list() {
    const created = await stripe.charges.create({ amount: 1999, ...card, metadata: { sku: "a-1" } });
    assert.equal(created.status, "succeeded");
    assert.equal(created.amount, 1999);
    assert.equal(created.metadata.sku, "a-1");
    assert.equal((await stripe.charges.retrieve(created.id)).id, created.id);
    const listed = await stripe.charges.list({ limit: 3 });
    assert.ok(listed.data.some((c) => c.id === created.id));
  },

  async same_idempotency_key_same_charge() {
    const idempotencyKey = unique("node");
    const first = await stripe.charges.create({ amount: 1234, ...card }, { idempotencyKey });
    const again = await stripe.charges.create({ amount: 1234, ...card }, { idempotencyKey });
    assert.equal(again.id, first.id);
  },

  async reused_key_with_other_parameters_is_an_idempotency_error() {
    const idempotencyKey = unique("node");
    await stripe.charges.create({ amount: 700, ...card }, { idempotencyKey });
    await rejects(stripe.charges.create({ amount: 701, ...card }, { idempotencyKey }), "StripeIdempotencyError");
  },

  async decline_is_a_card_error() {
    const error = await rejects(
      stripe.charges.create({ amount: 500, currency: "usd", payment_method: "pm_card_chargeDeclined" }),
      "StripeCardError",
    );
    assert.equal(error.statusCode, 402);
    assert.equal(error.code, "card_declined");
  },

  async bad_parameter_is_an_invalid_request_naming_it() {
    const error = await rejects(stripe.charges.create({ amount: -5, ...card }), "StripeInvalidRequestError");
    assert.equal(error.statusCode, 400);
    assert.equal(error.param, "amount");
  },

  async unknown_charge_is_resource_missing() {
    const error = await rejects(stripe.charges.retrieve("ch_doesnotexist"), "StripeInvalidRequestError");
    assert.equal(error.statusCode, 404);
    assert.equal(error.code, "resource_missing");
  },

  async bad_key_is_an_authentication_error() {
    const stranger = new Stripe("sk_test_wrong", { host: url.hostname, port: Number(url.port), protocol: "http" });
    await rejects(stranger.charges.list(), "StripeAuthenticationError");
  },

  async refunds_partial_then_too_much() {
    const charge = await stripe.charges.create({ amount: 3000, ...card });
    const refund = await stripe.refunds.create({ charge: charge.id, amount: 1000, reason: "duplicate" });
    assert.equal(refund.status, "succeeded");
    assert.equal((await stripe.refunds.retrieve(refund.id)).charge, charge.id);
    const listed = await stripe.refunds.list({ charge: charge.id });
    assert.deepEqual(listed.data.map((r) => r.id), [refund.id]);
    const error = await rejects(stripe.refunds.create({ charge: charge.id, amount: 2001 }), "StripeInvalidRequestError");
    assert.equal(error.code, "amount_too_large");
  },

  async balance_and_payout() {
    await stripe.charges.create({ amount: 2500, ...card });
    const [before] = (await stripe.balance.retrieve()).available;
    const payout = await stripe.payouts.create({ amount: 500, currency: "usd" });
    assert.equal(payout.status, "in_transit");
    assert.equal((await stripe.payouts.retrieve(payout.id)).amount, 500);
    const [after] = (await stripe.balance.retrieve()).available;
    assert.equal(after.amount, before.amount - 500);
  },

  async auto_pagination_walks_every_charge_once() {
    const made = new Set();
    for (let i = 0; i < 5; i++) made.add((await stripe.charges.create({ amount: 100 + i, ...card })).id);
    const seen = [];
    for await (const charge of stripe.charges.list({ limit: 2 })) seen.push(charge.id);
    assert.equal(new Set(seen).size, seen.length, "a charge seen twice");
    for (const id of made) assert.ok(seen.includes(id), `${id} not listed`);
  },

  async updates_set_and_unset_metadata() {
    const charge = await stripe.charges.create({ amount: 1100, ...card, metadata: { a: "1", b: "2" } });
    const updated = await stripe.charges.update(charge.id, { metadata: { a: "", c: "3" }, description: "gift" });
    assert.deepEqual(updated.metadata, { b: "2", c: "3" });
    assert.equal(updated.description, "gift");
    const refund = await stripe.refunds.create({ charge: charge.id, amount: 100 });
    assert.deepEqual((await stripe.refunds.update(refund.id, { metadata: { why: "late" } })).metadata, { why: "late" });
  },

  async request_id_and_lists_both_ways() {
    const first = await stripe.charges.create({ amount: 1200, ...card });
    assert.match(first.lastResponse.requestId, /^req_/);
    const second = await stripe.charges.create({ amount: 1201, ...card });
    const older = await stripe.charges.list({ starting_after: second.id, limit: 1 });
    assert.deepEqual(older.data.map((c) => c.id), [first.id]);
    const newer = await stripe.charges.list({ ending_before: first.id, limit: 1 });
    assert.deepEqual(newer.data.map((c) => c.id), [second.id]);
    const since = await stripe.charges.list({ created: { gte: first.created }, limit: 100 });
    assert.ok(since.data.some((c) => c.id === second.id));
  },

  async customers_lifecycle() {
    const email = `${unique("ada")}@example.com`;
    const customer = await stripe.customers.create({ email, name: "Ada", metadata: { tier: "gold" } });
    assert.equal(customer.object, "customer");
    assert.equal((await stripe.customers.retrieve(customer.id)).email, email);
    const updated = await stripe.customers.update(customer.id, { metadata: { tier: "" , since: "2024" } });
    assert.deepEqual(updated.metadata, { since: "2024" });
    assert.deepEqual((await stripe.customers.list({ email })).data.map((c) => c.id), [customer.id]);
    const charge = await stripe.charges.create({ amount: 1500, ...card, customer: customer.id });
    assert.equal(charge.customer, customer.id);
    const deleted = await stripe.customers.del(customer.id);
    assert.equal(deleted.deleted, true);
    await rejects(stripe.customers.retrieve(customer.id), "StripeInvalidRequestError", { code: "resource_missing" });
  },

  async charge_for_an_unknown_customer_is_resource_missing() {
    const error = await rejects(
      stripe.charges.create({ amount: 1500, ...card, customer: "cus_doesnotexist" }),
      "StripeInvalidRequestError",
    );
    assert.equal(error.code, "resource_missing");
    assert.equal(error.param, "customer");
  },

  async charges_listed_by_customer() {
    const customer = await stripe.customers.create({ email: `${unique("bo")}@example.com` });
    const first = await stripe.charges.create({ amount: 1300, ...card, customer: customer.id });
    await stripe.charges.create({ amount: 1301, ...card });
    const second = await stripe.charges.create({ amount: 1302, ...card, customer: customer.id });
    const theirs = await stripe.charges.list({ customer: customer.id });
    assert.deepEqual(theirs.data.map((c) => c.id), [second.id, first.id]);
    const newer = await stripe.charges.list({ customer: customer.id, ending_before: first.id });
    assert.deepEqual(newer.data.map((c) => c.id), [second.id]);
    assert.deepEqual((await stripe.charges.list({ customer: "cus_doesnotexist" })).data, []);
  },

  async events_page_backwards() {
    const made = [];
    for (let i = 0; i < 4; i++) made.push((await stripe.charges.create({ amount: 1800 + i, ...card })).id);
    const listed = await stripe.events.list({ type: "charge.succeeded", limit: 10 });
    assert.deepEqual(listed.data.map((e) => e.data.object.id), [...made].reverse());
    const oldest = listed.data[listed.data.length - 1];
    const page = await stripe.events.list({ type: "charge.succeeded", ending_before: oldest.id, limit: 2 });
    assert.deepEqual(page.data.map((e) => e.data.object.id), [made[2], made[1]]);
    assert.equal(page.has_more, true);
    const seen = [];
    for await (const e of stripe.events.list({ type: "charge.*", ending_before: oldest.id, limit: 1 })) {
      seen.push(e.data.object.id);
    }
    assert.deepEqual(seen, made.slice(1));
  },

  async events_list_and_retrieve() {
    const charge = await stripe.charges.create({ amount: 1700, ...card });
    const listed = await stripe.events.list({ type: "charge.succeeded", limit: 10 });
    const event = listed.data.find((e) => e.data.object.id === charge.id);
    assert.ok(event, "no charge.succeeded event for the charge");
    const again = await stripe.events.retrieve(event.id);
    assert.equal(again.type, "charge.succeeded");
    assert.equal(again.data.object.amount, 1700);
  },

  async webhook_endpoints_create_retrieve_update_list_del() {
    const made = await stripe.webhookEndpoints.create({
      url: "https://example.com/node-hooks",
      enabled_events: ["charge.succeeded", "charge.refunded"],
      metadata: { team: "pay", old: "x" },
    });
    assert.equal(made.object, "webhook_endpoint");
    assert.match(made.secret, /^whsec_/);
    assert.equal(made.status, "enabled");
    const got = await stripe.webhookEndpoints.retrieve(made.id);
    assert.equal(got.url, "https://example.com/node-hooks");
    assert.equal(got.secret, undefined);
    const changed = await stripe.webhookEndpoints.update(made.id, {
      disabled: true,
      enabled_events: ["*"],
      metadata: { old: "" },
    });
    assert.equal(changed.status, "disabled");
    assert.deepEqual(changed.enabled_events, ["*"]);
    assert.deepEqual(changed.metadata, { team: "pay" });
    const listed = await stripe.webhookEndpoints.list({ limit: 10 });
    assert.ok(listed.data.some((e) => e.id === made.id));
    const gone = await stripe.webhookEndpoints.del(made.id);
    assert.equal(gone.deleted, true);
    const missing = await rejects(stripe.webhookEndpoints.retrieve(made.id), "StripeInvalidRequestError");
    assert.equal(missing.code, "resource_missing");
    const refused = await rejects(
      stripe.webhookEndpoints.create({ url: "https://example.com", enabled_events: ["charge.exploded"] }),
      "StripeInvalidRequestError",
    );
    assert.equal(refused.param, "enabled_events");
  },

  async webhook_delivered_and_verified() {
    let resolve;
    const arrived = new Promise((r) => (resolve = r));
    const server = createServer((req, res) => {
      const chunks = [];
      req.on("data", (c) => chunks.push(c));
      req.on("end", () => {
        res.writeHead(200).end("ok");
        resolve({ body: Buffer.concat(chunks).toString("utf8"), signature: req.headers["stripe-signature"] });
      });
    });
    await new Promise((r) => server.listen(0, "127.0.0.1", r));
    try {
      const endpoint = await stripe.webhookEndpoints.create({
        url: `http://127.0.0.1:${server.address().port}/hooks`,
        enabled_events: ["charge.succeeded"],
      });
      const charge = await stripe.charges.create({ amount: 2100, ...card });
      const timeout = new Promise((_, reject) => setTimeout(() => reject(new Error("no webhook in 30 s")), 30000));
      const { body, signature } = await Promise.race([arrived, timeout]);
      const event = stripe.webhooks.constructEvent(body, signature, endpoint.secret);
      assert.equal(event.type, "charge.succeeded");
      assert.equal(event.data.object.id, charge.id);
      assert.throws(() => stripe.webhooks.constructEvent(body, signature, "whsec_not_this_one"));
    } finally {
      server.close();
    }
  },

  async payment_intent_lifecycle() {
    const customer = await stripe.customers.create({ email: `${unique("cy")}@example.com` });
    const intent = await stripe.paymentIntents.create({
      amount: 4200,
      currency: "usd",
      customer: customer.id,
    });
    assert.equal(intent.object, "payment_intent");
    assert.equal(intent.status, "requires_payment_method");
    assert.equal(intent.customer, customer.id);
    const updated = await stripe.paymentIntents.update(intent.id, {
      payment_method: "pm_card_visa",
      metadata: { order: "42" },
    });
    assert.equal(updated.status, "requires_confirmation");
    assert.equal(updated.payment_method, "pm_card_visa");
    assert.deepEqual(updated.metadata, { order: "42" });
    const confirmed = await stripe.paymentIntents.confirm(intent.id);
    assert.equal(confirmed.status, "succeeded");
    assert.equal(confirmed.amount_received, 4200);
    const charge = await stripe.charges.retrieve(confirmed.latest_charge);
    assert.equal(charge.payment_intent, intent.id);
    assert.equal(charge.amount, 4200);
    const got = await stripe.paymentIntents.retrieve(intent.id);
    assert.equal(got.status, "succeeded");
    assert.equal(got.latest_charge, confirmed.latest_charge);
    await stripe.paymentIntents.create({ amount: 100, currency: "usd" });
    const theirs = await stripe.paymentIntents.list({ customer: customer.id });
    assert.deepEqual(theirs.data.map((i) => i.id), [intent.id]);
    const since = await stripe.paymentIntents.list({ created: { gte: intent.created }, limit: 100 });
    assert.ok(since.data.some((i) => i.id === intent.id));
    const later = await stripe.paymentIntents.list({ created: { gte: intent.created + 3600 } });
    assert.deepEqual(later.data, []);
  },

  async payment_intent_manual_capture_in_part() {
    const intent = await stripe.paymentIntents.create({
      amount: 5000,
      ...card,
      confirm: true,
      capture_method: "manual",
    });
    assert.equal(intent.status, "requires_capture");
    assert.equal(intent.amount_capturable, 5000);
    assert.equal(intent.amount_received, 0);
    const captured = await stripe.paymentIntents.capture(intent.id, { amount_to_capture: 3000 });
    assert.equal(captured.status, "succeeded");
    assert.equal(captured.amount_received, 3000);
    assert.equal(captured.amount_capturable, 0);
    const charge = await stripe.charges.retrieve(captured.latest_charge);
    assert.equal(charge.payment_intent, intent.id);
    assert.equal(charge.captured, true);
    assert.equal(charge.amount_captured, 3000);
    assert.equal(charge.amount_refunded, 2000);
  },

  async payment_intent_cancel_then_capture_is_refused() {
    const intent = await stripe.paymentIntents.create({
      amount: 1500,
      ...card,
      confirm: true,
      capture_method: "manual",
    });
    assert.equal(intent.status, "requires_capture");
    const canceled = await stripe.paymentIntents.cancel(intent.id, {
      cancellation_reason: "requested_by_customer",
    });
    assert.equal(canceled.status, "canceled");
    assert.equal(canceled.cancellation_reason, "requested_by_customer");
    assert.ok(canceled.canceled_at);
    await rejects(stripe.paymentIntents.capture(intent.id), "StripeInvalidRequestError", {
      code: "payment_intent_unexpected_state",
    });
    assert.equal((await stripe.paymentIntents.retrieve(intent.id)).status, "canceled");
  },

  async payment_intent_decline_then_another_card() {
    const intent = await stripe.paymentIntents.create({ amount: 700, currency: "usd" });
    const error = await rejects(
      stripe.paymentIntents.confirm(intent.id, { payment_method: "pm_card_chargeDeclined" }),
      "StripeCardError",
      { code: "card_declined" },
    );
    assert.equal(error.statusCode, 402);
    assert.equal(error.raw.payment_intent.id, intent.id);
    assert.equal(error.raw.payment_intent.status, "requires_payment_method");
    const paid = await stripe.paymentIntents.confirm(intent.id, { payment_method: "pm_card_visa" });
    assert.equal(paid.status, "succeeded");
    assert.equal(paid.amount_received, 700);
    assert.equal(paid.last_payment_error, null);
  },

  async payment_intent_idempotency_key_replays_and_guards() {
    const idempotencyKey = unique("node-pi");
    const params = { amount: 800, ...card, confirm: true };
    const first = await stripe.paymentIntents.create(params, { idempotencyKey });
    assert.equal(first.status, "succeeded");
    const again = await stripe.paymentIntents.create({ ...params }, { idempotencyKey });
    assert.equal(again.id, first.id);
    assert.equal(again.latest_charge, first.latest_charge);
    const error = await rejects(
      stripe.paymentIntents.create({ ...params, amount: 801 }, { idempotencyKey }),
      "StripeIdempotencyError",
    );
    assert.equal(error.rawType, "idempotency_error");
    const listed = await stripe.paymentIntents.list({ limit: 10 });
    assert.deepEqual(listed.data.map((i) => i.id), [first.id]);
  },

  async payment_intent_events_listed() {
    const intent = await stripe.paymentIntents.create({ amount: 2600, currency: "usd" });
    await stripe.paymentIntents.confirm(intent.id, { payment_method: "pm_card_visa" });
    const listed = await stripe.events.list({ type: "payment_intent.*", limit: 10 });
    const ours = listed.data.filter((e) => e.data.object.id === intent.id);
    assert.deepEqual(ours.map((e) => e.type), ["payment_intent.succeeded", "payment_intent.created"]);
    const succeeded = ours[0];
    assert.equal(succeeded.data.object.status, "succeeded");
    assert.equal(succeeded.data.object.amount_received, 2600);
    assert.equal((await stripe.events.retrieve(succeeded.id)).type, "payment_intent.succeeded");
  },
};

for (const name of only.length ? only : Object.keys(checks)) {
  const check = checks[name];
  let line;
  if (!check) {
    line = { check: name, ok: false, error: "no such check" };
  } else {
    try {
      await check();
      line = { check: name, ok: true };
    } catch (error) {
      line = { check: name, ok: false, error: `${error.type ?? error.name}: ${error.message}` };
    }
  }
  console.log(JSON.stringify(line));
}
