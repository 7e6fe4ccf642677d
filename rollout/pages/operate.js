// The operator page: the rollout and its gates, its controls (each confirmed, each in the audit
// log), the share of traffic over the rollout, the review loop's figures and budgets, the audit log.
// Everything comes from the controller's own routes with the operator's key; refreshed every 5 s.

import { $, call, signInFor } from "/pages/common.js";

const state = { action: null, timer: null };
window.nicheloopOperate = state; // read by the browser tests

async function json(path) {
  const res = await call(path);
  if (!res.ok) throw new Error(`${path}: ${res.status}`);
  return res.json();
}

// -- signing in -------------------------------------------------------------------------------
async function start() {
  $("work").hidden = false;
  await refresh();
  state.timer = setInterval(refresh, 5_000);
}

// -- figures ------------------------------------------------------------------------------------
async function refresh() {
  const [status, history, audit, review, budget] = await Promise.all([
    json("/v1/rollouts/status"),
    json("/v1/rollouts/history?limit=200"),
    json("/v1/audit?limit=50"),
    json("/v1/review/health"),
    json("/v1/review/budget"),
  ]).catch((err) => {
    $("updated").textContent = `Not updated: ${err.message}`;
    return [];
  });
  if (!status) return;
  showStatus(status);
  showHistory(history.filter((e) => e.rollout_id === status.rollout_id));
  showAudit(audit);
  showReview(review, budget);
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

function rows(dl, pairs) {
  dl.replaceChildren(
    ...pairs.flatMap(([term, value]) => {
      const dt = document.createElement("dt");
      dt.textContent = term;
      const dd = document.createElement("dd");
      dd.textContent = value;
      return [dt, dd];
    }),
  );
}

function showStatus(s) {
  rows($("status"), [
    ["champion", s.champion ?? "none recorded"],
    ["candidate", s.candidate ?? "none"],
    ["state", s.state + (s.step && s.step !== s.state ? ` (${s.step})` : "")],
    ["candidate's share", s.share === undefined ? "–" : `${(100 * s.share).toFixed(0)} %`],
    ["failed checks", s.failures === undefined ? "–" : `${s.failures} of ${s.max_failures}`],
    ["controller heartbeat", s.heartbeat_age_s === undefined ? "–" : `${s.heartbeat_age_s} s ago`],
  ]);
  $("waiting").textContent = `Waiting for: ${s.waiting_for}`;
  const body = $("gates").tBodies[0];
  body.replaceChildren(
    ...(s.gates || []).map((g) => {
      const tr = document.createElement("tr");
      tr.className = `verdict-${g.verdict}`;
      for (const text of [g.gate, g.verdict, g.reason]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function showHistory(events) {
  $("history").replaceChildren(
    ...events.slice(-12).reverse().map((e) => {
      const li = document.createElement("li");
      li.textContent = `${new Date(e.at).toLocaleTimeString()} ${e.from_state ?? "start"} → ${e.to_state} by ${e.actor}: ${e.reason}`;
      return li;
    }),
  );
  drawShares(events);
}

function drawShares(events) {
  // the candidate's share after each move, as a step line over time
  const svg = $("share-chart");
  const title = svg.querySelector("title");
  svg.replaceChildren(title);
  if (!events.length) return;
  const t0 = Date.parse(events[0].at);
  const t1 = Math.max(Date.now(), t0 + 1);
  const x = (t) => (600 * (t - t0)) / (t1 - t0);
  const y = (share) => 130 - 120 * share;
  let d = "";
  let last = 0;
  for (const e of events) {
    const share = e.share ?? last;
    const at = x(Date.parse(e.at));
    d += d ? ` H ${at.toFixed(1)} V ${y(share).toFixed(1)}` : `M ${at.toFixed(1)} ${y(share).toFixed(1)}`;
    last = share;
  }
  d += ` H 600`;
  const ns = "http://www.w3.org/2000/svg";
  for (const share of [0, 0.5, 1]) {
    const line = document.createElementNS(ns, "line");
    Object.entries({ x1: 0, x2: 600, y1: y(share), y2: y(share), class: "grid" }).forEach(([k, v]) => line.setAttribute(k, v));
    svg.append(line);
  }
  const path = document.createElementNS(ns, "path");
  path.setAttribute("d", d);
  path.setAttribute("class", "share");
  svg.append(path);
}

function showAudit(entries) {
  $("audit").tBodies[0].replaceChildren(
    ...entries.map((e) => {
      const tr = document.createElement("tr");
      for (const text of [new Date(e.at).toLocaleString(), `${e.actor} (${e.role})`, e.action, e.target, e.detail?.reason || ""]) {
        const td = document.createElement("td");
        td.textContent = text;
        tr.append(td);
      }
      return tr;
    }),
  );
}

function showReview(r, budget) {
  rows($("review"), [
    ["queued", r.queued],
    ["in review", r.in_review],
    ["labeled, last hour", r.labeled_last_hour],
    ["labeled, last day", r.labeled_last_day],
    ["median seconds a label", r.median_seconds_per_label ?? "–"],
    ["oldest waiting", r.oldest_queued_age_s === null ? "–" : `${Math.round(r.oldest_queued_age_s / 60)} min`],
    ["budget left this hour", `${r.budget.left_hour} of ${r.budget.per_hour}`],
  ]);
  const form = $("budget-form");
  for (const [name, value] of Object.entries(budget)) {
    const input = form.elements.namedItem(name);
    if (input && document.activeElement !== input) input.value = value;
  }
}

// -- acting -------------------------------------------------------------------------------------
const ACTS = {
  start: "Start the candidate in shadow",
  pause: "Pause the rollout",
  resume: "Resume the rollout",
  rollback: "Roll the candidate back",
  promote: "Promote the candidate now, skipping the remaining gates",
};

function ask(action) {
  state.action = action;
  $("confirm-title").textContent = `${ACTS[action]}?`;
  $("confirm-what").textContent = action === "promote" ? "A forced promotion needs a reason." : "";
  $("version-label").hidden = $("confirm-version").hidden = action !== "start";
  $("confirm-reason").value = "";
  $("act-result").textContent = "";
  $("confirm").hidden = false;
  $(action === "start" ? "confirm-version" : "confirm-reason").focus();
}

async function act() {
  const action = state.action;
  $("confirm").hidden = true;
  const reason = $("confirm-reason").value.trim();
  const body = action === "start"
    ? { version: $("confirm-version").value.trim() || null }
    : { reason };
  const res = await call(`/v1/rollouts/${action}`, { method: "POST", body });
  const answer = await res.json().catch(() => ({}));
  $("act-result").textContent = res.ok
    ? `${ACTS[action]}: done (${answer.state}).`
    : `${ACTS[action]}: refused (${res.status}): ${answer.detail ?? ""}`;
  $("act-result").className = res.ok ? "ok" : "refused";
  refresh();
}

async function setBudgets(event) {
  event.preventDefault();
  const body = {};
  for (const input of $("budget-form").querySelectorAll("input")) {
    if (input.value !== "") body[input.name] = Number(input.value);
  }
  const res = await call("/v1/review/budget", { method: "PUT", body });
  const answer = await res.json().catch(() => ({}));
  $("budget-result").textContent = res.ok ? "Budgets set." : `Refused (${res.status}): ${JSON.stringify(answer.detail)}`;
  refresh();
}

// -- start --------------------------------------------------------------------------------------
for (const button of $("controls").querySelectorAll("button")) {
  button.addEventListener("click", () => ask(button.dataset.action));
}
$("confirm-form").addEventListener("submit", (event) => {
  event.preventDefault();
  act();
});
$("confirm-no").addEventListener("click", () => { $("confirm").hidden = true; });
document.addEventListener("keydown", (event) => {
  if (event.key === "Escape") $("confirm").hidden = true;
});
$("budget-form").addEventListener("submit", setBudgets);
signInFor("operator", start);
