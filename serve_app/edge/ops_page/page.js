// payray ops: polls the stack's figures (GET /v1/admin/dashboard) and draws them on the diagram and charts.
// The figures are computed by the ops monitor (payray/figures.py); this file only shows them.
"use strict";

const POLL_MS = 1000;
const HISTORY_S = 300;
const frames = [];
let lastAt = null;
let lastAnswer = 0;

const rate = (n) => (n == null ? "\u2014" : n >= 1000 ? `${(n / 1000).toFixed(1)}k/s` : `${+n.toFixed(1)}/s`);
const ms = (n) => (n == null ? "\u2014" : n >= 1000 ? `${(n / 1000).toFixed(1)} s` : `${Math.round(n)} ms`);
const pct = (n) => `${(100 * (n || 0)).toFixed(n > 0 && n < 0.01 ? 2 : 1)}%`;
const count = (n) => (n == null ? "\u2014" : n >= 10000 ? `${(n / 1000).toFixed(0)}k` : String(n));
const ago = (at, now) => (at == null ? "never" : `${Math.max(0, Math.round(now - at))} s ago`);

function put(id, text) {
  const el = document.getElementById(id);
  if (el && el.textContent !== text) el.textContent = text;
}

function mark(part, state) {
  const box = document.getElementById(`box-${part}`);
  if (!box) return;
  box.setAttribute("class", `box ${state ? state.status : "unknown"}`);
  put(`${part}-why`, state && state.why ? state.why : state ? state.status : "no figures");
}

function flowLine(flow) {
  return `p50 ${ms(flow.p50_ms)} \u00b7 p99 ${ms(flow.p99_ms)}`;
}

function render(f, now) {
  const status = f.status || {};
  put("clients-requests", `${rate(f.clients.per_s)} requests`);
  put("clients-latency", flowLine(f.clients));
  put("clients-errors", `errors ${pct(f.clients.error_rate)} \u00b7 4xx ${rate(f.clients.rejected_per_s)}`);
  mark("clients", status.api);

  const up = f.replicas.filter((r) => r.up);
  put("api-replicas", `${up.length} of ${f.replicas.length} replicas up`);
  put("api-charges", `charges ${rate(f.charges.per_s)} \u00b7 p99 ${ms(f.charges.p99_ms)}`);
  put("api-errors", `5xx ${rate(f.clients.errors_per_s)}`);
  put("api-nodes", f.replicas.map((r) => `${r.up ? "" : "\u2717"}${r.node.slice(0, 6)} ${rate(r.per_s)}`).join(" \u00b7 "));
  mark("api", status.api);

  put("redis-replays", `replays ${rate(f.replays_per_s)}`);
  put("redis-state", f.redis_up ? "answering" : "not answering");
  mark("redis", status.redis);

  put("psp-calls", `${rate(f.psp.per_s)} calls`);
  put("psp-latency", flowLine(f.psp));
  put("psp-failures", `failures ${rate(f.psp.errors_per_s)} (${pct(f.psp.error_rate)})`);
  mark("psp", status.psp);

  put("webhooks-events", `${rate(f.webhooks.per_s)} events`);
  put("webhooks-latency", flowLine(f.webhooks));
  put("webhooks-refused", `refused ${rate(f.webhooks.rejected_per_s)} \u00b7 5xx ${rate(f.webhooks.errors_per_s)}`);
  mark("webhooks", status.webhooks);

  const hosts = f.wallet_hosts;
  const live = hosts.filter((h) => h.up);
  put("wallets-hosts", `${live.length} of ${hosts.length} hosts up`);
  put("wallets-cache", `${count(live.reduce((n, h) => n + h.wallets, 0))} wallets cached`);
  put("wallets-queues", `queues ${live.map((h) => h.queued).join(" / ") || "\u2014"}`);
  put("wallets-calls", `${rate(live.reduce((n, h) => n + h.calls_per_s, 0))} calls`);
  mark("wallets", status.wallets);

  put("ledger-postings", `${rate(f.ledger.postings_per_s)} postings`);
  put("ledger-batches", `${rate(f.ledger.batches_per_s)} batches \u00b7 mean ${f.ledger.mean_batch ?? "\u2014"}`);
  put("ledger-queued", `queued ${f.ledger.queued}`);
  mark("ledger", status.ledger);

  const db = f.database || {};
  put("postgres-state", db.up ? "answering" : db.up === false ? "not answering" : "\u2026");
  put("postgres-pending", `pending ${count(db.pending)} \u00b7 unknown ${count(db.unknown)}`);
  put("postgres-stuck", `stuck past grace ${count(db.stuck)}`);
  put("postgres-refunds", `refunds unfinished ${count(db.refunds_unfinished)}`);
  mark("postgres", status.postgres);

  const notes = f.notifications || {};
  put("outbox-waiting", `waiting ${count(db.outbox_waiting)}`);
  put("outbox-published", `published ${count(notes.published)}${notes.relay_up === false ? " (relay down)" : ""}`);
  put("outbox-delivered", `delivered ${count(notes.delivered)} \u00b7 webhooks ${count(notes.webhook_attempts)}`);
  mark("outbox", notes.relay_up === false ? { status: "down", why: "the relay does not answer" } : { status: "ok" });

  const janitor = f.janitor || {};
  const counts = janitor.last_counts || {};
  const found = Object.entries(counts).filter(([k]) => k.endsWith("_found")).reduce((n, [, v]) => n + v, 0);
  put("janitor-last", `last sweep ${ago(janitor.last_sweep_at, f.at)}`);
  put("janitor-found", `found ${found} \u00b7 took ${janitor.last_sweep_s ?? "\u2014"} s`);
  put("janitor-sweeps", `${janitor.sweeps ?? 0} sweeps`);
  mark("janitor", status.janitor);

  const recon = f.reconciliation || {};
  put("reconciliation-open", `${recon.open ?? "\u2014"} open discrepancies`);
  put("reconciliation-last", `last day ${recon.last_day || "none yet"}`);
  mark("reconciliation", status.reconciliation);

  const inv = f.invariants || {};
  put("invariants-state", inv.ok == null ? "not checked yet" : inv.ok ? "all hold" : `failing: ${inv.failing.join(", ")}`);
  put("invariants-checked", `checked ${ago(inv.checked_at, f.at)}${inv.seconds != null ? ` (${inv.seconds} s)` : ""}`);
  mark("invariants", status.invariants);

  const arrows = {
    "clients-api": f.clients.per_s, "api-redis": f.replays_per_s, "redis-psp": f.psp.per_s,
    "psp-wallets": f.ledger.postings_per_s, "psp-webhooks": f.webhooks.per_s,
    "wallets-ledger": f.ledger.batches_per_s, "ledger-postgres": f.ledger.postings_per_s,
    "postgres-outbox": null, "janitor-postgres": null,
  };
  for (const [name, value] of Object.entries(arrows)) {
    put(`rate-${name}`, value == null ? "" : rate(value));
    document.getElementById(`arrow-${name}`)?.setAttribute("class", value > 0 ? "arrow busy" : "arrow");
  }
  document.body.dataset.frames = String(frames.length);
  document.body.dataset.at = String(f.at);
}

const SERIES = {
  "chart-throughput": [
    ["requests", "#2b6cb0", (f) => f.clients.per_s],
    ["charges", "#1a7f37", (f) => f.charges.per_s],
    ["PSP calls", "#6b46c1", (f) => f.psp.per_s],
    ["postings", "#dd6b20", (f) => f.ledger.postings_per_s],
    ["webhooks", "#718096", (f) => f.webhooks.per_s],
  ],
  "chart-latency": [
    ["p50", "#2b6cb0", (f) => f.clients.p50_ms],
    ["p99", "#c0392b", (f) => f.clients.p99_ms],
    ["PSP p50", "#6b46c1", (f) => f.psp.p50_ms],
  ],
};

function chart(id, now) {
  const svg = document.getElementById(id);
  const [W, H, L, R, T, B] = [600, 230, 46, 8, 22, 20];
  const start = now - HISTORY_S;
  const shown = frames.filter((f) => f.at >= start);
  let top = 0;
  for (const [, , pick] of SERIES[id]) for (const f of shown) top = Math.max(top, pick(f) || 0);
  top = top > 0 ? niceCeiling(top) : 1;
  const x = (t) => L + ((t - start) / HISTORY_S) * (W - L - R);
  const y = (v) => H - B - (v / top) * (H - T - B);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (top * i) / 4;
    parts.push(`<line class="axis" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/>`);
    parts.push(`<text class="tick" x="${L - 4}" y="${y(v) + 4}" text-anchor="end">${+v.toFixed(1)}</text>`);
  }
  for (const m of [5, 4, 3, 2, 1, 0]) {
    const anchor = m === 5 ? "start" : m ? "middle" : "end";
    parts.push(`<text class="tick" x="${x(now - m * 60)}" y="${H - 4}" text-anchor="${anchor}">${m ? `-${m} min` : "now"}</text>`);
  }
  let lx = L;
  for (const [name, color, pick] of SERIES[id]) {
    const points = shown.filter((f) => pick(f) != null).map((f) => `${x(f.at).toFixed(1)},${y(pick(f)).toFixed(1)}`);
    if (points.length) parts.push(`<polyline stroke="${color}" points="${points.join(" ")}"/>`);
    parts.push(`<rect x="${lx}" y="5" width="10" height="10" fill="${color}"/>`);
    parts.push(`<text class="legend" x="${lx + 14}" y="14">${name}</text>`);
    lx += 24 + name.length * 7;
  }
  svg.innerHTML = parts.join("");
}

function niceCeiling(v) {
  const step = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * step >= v) return m * step;
  return 10 * step;
}

async function poll() {
  try {
    const url = "/v1/admin/dashboard" + (lastAt == null ? "" : `?since=${lastAt}`);
    const answer = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
    if (answer.status === 401) {
      window.location.reload(); // the session ended: the page shows the sign-in form
      return;
    }
    if (!answer.ok) throw new Error(`HTTP ${answer.status}`);
    const body = await answer.json();
    lastAnswer = Date.now();
    for (const f of body.frames) if (lastAt == null || f.at > lastAt) frames.push(f);
    while (frames.length && frames[0].at < body.now - HISTORY_S) frames.shift();
    if (frames.length) {
      const latest = frames[frames.length - 1];
      lastAt = latest.at;
      render(latest, body.now);
      chart("chart-throughput", body.now);
      chart("chart-latency", body.now);
    }
    freshness(body.now);
  } catch (error) {
    freshness(null, error);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

function freshness(now, error) {
  const el = document.getElementById("freshness");
  if (error || now == null) {
    const since = lastAnswer ? `${Math.round((Date.now() - lastAnswer) / 1000)} s` : "ever";
    el.textContent = `no answer from the API for ${since} (${error})`;
    el.className = "freshness stale";
    return;
  }
  const age = lastAt == null ? null : now - lastAt;
  el.textContent = age == null ? "the monitor is starting" : `figures ${age.toFixed(0)} s old \u00b7 ${frames.length} s of history`;
  el.className = age != null && age > 5 ? "freshness stale" : "freshness";
}

poll();
