// The operator page: the rollout and its gates, its controls (each confirmed, each in the audit
// log), the retraining policy's verdict and its pause, the share of traffic over the rollout, the drift timeline with its alarms, windows, images
// and reports, the review loop's figures and budgets, the audit log. Everything comes from the
// controller's own routes with the operator's key; refreshed every 5 s (the drift every 30 s).

import { $, call, loadImage, signInFor } from "/pages/common.js";

const DRIFT_EVERY_MS = 30_000;
const MOVES = new Set(["promoted", "baked", "rolled_back", "aborted"]); // marked on the drift charts
const state = { action: null, timer: null, drift: { windows: [], since: 0, fetched: 0, open: null } };
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
  const [status, history, audit, review, budget, shares] = await Promise.all([
    json("/v1/rollouts/status"),
    json("/v1/rollouts/history?limit=200"),
    json("/v1/audit?limit=50"),
    json("/v1/review/health"),
    json("/v1/review/budget"),
    json("/v1/review/shares"),
  ]).catch((err) => {
    $("updated").textContent = `Not updated: ${err.message}`;
    return [];
  });
  if (!status) return;
  showStatus(status);
  showHistory(history.filter((e) => e.rollout_id === status.rollout_id));
  if (Date.now() - state.drift.fetched >= DRIFT_EVERY_MS) {
    state.drift.fetched = Date.now();
    json("/v1/drift/timeline?hours=24")
      .then((t) => showDrift(t, history))
      .catch((err) => { $("drift-summary").textContent = `Drift not read: ${err.message}`; });
    refreshClasses();
    refreshVersions();
    json("/v1/quality/agreement?hours=24").then(drawAgreement).catch(() => {});
    json("/v1/review/quality").then(showReviewers).catch(() => {});
  }
  json("/v1/policy/decision").then(showPolicy).catch((err) => {
    $("policy-verdict").textContent = `The policy's verdict was not read: ${err.message}`;
  });
  showAudit(audit);
  showReview(review);
  fillForm("budget-form", budget, 1);
  fillForm("shares-form", shares, 100);
  $("updated").textContent = `Updated ${new Date().toLocaleTimeString()}`;
}

// the retraining policy: its verdict, the evidence it weighed, whether an operator paused it
function showPolicy(p) {
  const d = p.decision;
  const ev = p.evidence;
  const ago = (t) => (t == null ? "never" : `${since(ev.now - t)} ago`);
  const byClass = (counts) => {  // "(crazing 12, scratches 3)", most first
    const top = Object.entries(counts ?? {}).sort((a, b) => b[1] - a[1]);
    return top.length ? ` (${top.map(([c, n]) => `${c} ${n}`).join(", ")})` : "";
  };
  $("policy-verdict").textContent = `${d.action === "train" ? "Train" : "Wait"} (${d.rule}): ${d.reason}`;
  $("policy-verdict").className = d.action === "train" ? "ok" : "";
  rows($("policy"), [
    ["state", p.paused ? `paused by ${p.paused.by}: ${p.paused.reason}` : "acts on its verdicts"],
    ["new labels", `${ev.new_labels}${byClass(ev.new_by_class)}`],
    ["drift alarm", ev.alarm_since == null ? "none holds"
      : `raised ${ago(ev.alarm_since)}; ${ev.labels_after_alarm} labels of its traffic${byClass(ev.after_alarm_by_class)}`],
    ["champion on users' labels", ev.accuracy_drop_points == null ? "no users' labels yet"
      : `${ev.accuracy_drop_points} points under its held-out accuracy (${ev.user_labels} labels)`],
    ["label-free stopgap", ev.stopgap != null ? `version ${ev.stopgap}`
      : p.stopgap_due ?? (ev.input_alarm_since == null ? "none: no image or embedding alarm" : "none yet")],
    ["new world", ev.world_since == null ? "none: the champion was trained for the world its line began in"
      : `began ${ago(ev.world_since)}; the champion learnt it from ${ev.world_labels} labels, ${ev.world_new_labels} new since`],
    ["last run", ago(ev.last_run_at)],
    ["champion registered", ago(ev.champion_since)],
  ]);
  $("policy-controls").querySelector("[data-action=policy-pause]").hidden = Boolean(p.paused);
  $("policy-controls").querySelector("[data-action=policy-resume]").hidden = !p.paused;
}

function since(seconds) {
  for (const [unit, size] of [["d", 86_400], ["h", 3600], ["min", 60]]) {
    if (seconds >= size) return `${(seconds / size).toFixed(1)} ${unit}`;
  }
  return `${Math.round(seconds)} s`;
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
    ["events waiting for Kafka", spoolText(s.spool)],
  ]);
  $("waiting").textContent = `Waiting for: ${s.waiting_for}`;
  const arms = Object.entries(s.arms || {});
  $("arms").hidden = !arms.length;
  $("arms").tBodies[0].replaceChildren(
    ...arms.map(([arm, a]) => {
      const tr = document.createElement("tr");
      const ms = (v) => (v === null ? "–" : `${v} ms`);
      return cells(cells(tr, [arm], "th"), [a.rps, ms(a.p50_ms), ms(a.p99_ms), `${a.errors} of ${a.calls} (${pct(a.error_rate)})`]);
    }),
  );
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

// the events on the publishers' disks (the broker was away): in all, the fullest spool, and any
// spool whose process went quiet while it held events
function spoolText(spool) {
  if (!spool) return "–";
  const roles = Object.entries(spool.by_role).filter(([, n]) => n).map(([role, n]) => `${role} ${n}`);
  let text = `${spool.depth} in ${spool.spools} spools` + (roles.length ? ` (${roles.join(", ")}; fullest ${pct(spool.fullest)})` : "");
  for (const q of spool.silent) text += `; ${q.depth} in ${q.role} spool ${q.spool} on ${q.host}, silent ${Math.round(q.age_s / 60)} min`;
  return text;
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

// -- drift --------------------------------------------------------------------------------------
const SVG = "http://www.w3.org/2000/svg";
const W = 600, H = 90, TOP_P = 8; // -log10(p) drawn up to 8

function svgEl(name, attrs, title) {
  const el = document.createElementNS(SVG, name);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (title) {
    const t = document.createElementNS(SVG, "title");
    t.textContent = title;
    el.append(t);
  }
  return el;
}

const when = (iso) => new Date(iso).toLocaleString();
const pText = (p) => (p === null ? "–" : p < 1e-4 ? p.toExponential(1) : p.toFixed(4));

function showDrift(timeline, history) {
  const d = state.drift;
  d.windows = timeline.windows.filter((w) => w.status === "ok" && w.p_value !== null);
  d.since = Date.parse(timeline.since);
  const byMonitor = Map.groupBy(d.windows, (w) => w.monitor);
  const raised = [...byMonitor].filter(([, ws]) => ws.at(-1).alarm).map(([m]) => m);
  $("drift-summary").textContent = raised.length
    ? `Alarm raised now: ${raised.join(", ")}.`
    : `No alarm raised now; ${d.windows.length} window verdicts in the last day.`;
  $("drift-summary").className = raised.length ? "refused" : "ok";
  // from the first verdict (or move) of the day to now: the chart spends its width on the data
  const moves = history.filter((e) => MOVES.has(e.to_state) && Date.parse(e.at) >= d.since);
  const times = [...d.windows.map((w) => w.evaluated_at), ...moves.map((m) => m.at)].map(Date.parse);
  const t1 = Date.now();
  const t0 = times.length ? Math.min(...times) - 0.02 * Math.max(60_000, t1 - Math.min(...times)) : d.since;
  const x = (iso) => (W * (Date.parse(iso) - t0)) / Math.max(1, t1 - t0);
  const y = (p) => H - 5 - ((H - 10) * Math.min(-Math.log10(Math.max(p, 1e-300)), TOP_P)) / TOP_P;
  $("drift-span").textContent = d.windows.length ? `From ${when(new Date(t0).toISOString())} to now; p-values from 1 (bottom) to 1e-${TOP_P} and below (top).` : "";
  $("drift-charts").replaceChildren(
    ...[...byMonitor].map(([monitor, ws]) => {
      const box = document.createElement("div");
      box.className = "drift-chart";
      const h4 = document.createElement("h4");
      h4.textContent = monitor;
      const svg = svgEl("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "none", role: "img", "aria-label": `${monitor}: p-value per window` });
      ws.forEach((w, i) => { // a raised alarm shades until the next window without it
        if (!w.alarm) return;
        const end = ws[i + 1] ? x(ws[i + 1].evaluated_at) : W;
        svg.append(svgEl("rect", { x: x(w.evaluated_at), y: 0, width: Math.max(1, end - x(w.evaluated_at)), height: H, class: "alarm" }));
      });
      svg.append(svgEl("line", { x1: 0, x2: W, y1: y(ws[0].alpha), y2: y(ws[0].alpha), class: "threshold" }, `threshold p = ${ws[0].alpha}`));
      for (const m of moves) {
        svg.append(svgEl("line", { x1: x(m.at), x2: x(m.at), y1: 0, y2: H, class: "move" }, `${m.to_state}: version ${m.candidate} at ${when(m.at)}`));
      }
      for (const w of ws) {
        const dot = svgEl("circle", { cx: x(w.evaluated_at), cy: y(w.p_value), r: 3, class: w.drifted ? "drifted" : "", "data-id": w.id },
          `${when(w.evaluated_at)}: p = ${pText(w.p_value)} over ${w.n}`);
        dot.addEventListener("click", () => openWindow(w.id));
        svg.append(dot);
      }
      box.append(h4, svg);
      return box;
    }),
  );
  const alarms = d.windows.filter((w) => w.change).reverse().slice(0, 20);
  $("drift-alarms").replaceChildren(
    ...(alarms.length ? alarms : [null]).map((w) => {
      const li = document.createElement("li");
      if (!w) {
        li.textContent = "No alarm raised or cleared in the last day.";
        return li;
      }
      const button = document.createElement("button");
      button.type = "button";
      button.className = `alarm-${w.change}`;
      button.dataset.id = w.id;
      button.textContent = `${w.monitor} alarm ${w.change} at ${when(w.evaluated_at)} (version ${w.model_version}, p = ${pText(w.p_value)} over ${w.n})`;
      button.addEventListener("click", () => openWindow(w.id));
      li.append(button);
      return li;
    }),
  );
}

async function openWindow(id) {
  const w = await json(`/v1/drift/windows/${id}`);
  state.drift.open = { id, images: 0 };
  $("drift-window").hidden = false;
  $("drift-window-title").textContent = `Window of ${when(w.started_at ?? w.evaluated_at)} to ${when(w.ended_at ?? w.evaluated_at)}: ${w.monitor}${w.change ? `, alarm ${w.change}` : ""}`;
  rows($("drift-window-figures"), [
    ["version", w.model_version],
    ["verdict", w.drifted ? "drifted" : "no drift"],
    ["p-value", `${pText(w.p_value)} (threshold ${w.alpha})`],
    ["score", w.score === null ? "–" : w.score.toFixed(3)],
    [w.feed === "inputs" ? "predictions" : "user labels", w.n],
  ]);
  const link = $("drift-report");
  link.hidden = !w.report_url;
  if (w.report_url) link.href = w.report_url;
  $("drift-window-title").focus();
  const images = await Promise.all(w.images.map((sha) => loadImage(`/v1/images/${sha}`)));
  $("drift-images").replaceChildren(
    ...images.filter(Boolean).map((src, i) => {
      const img = document.createElement("img");
      img.src = src;
      img.alt = `Image ${i + 1} the model answered in this window`;
      return img;
    }),
  );
  state.drift.open.images = images.filter(Boolean).length;
}

// -- per class and versions ---------------------------------------------------------------------
const PALETTE = ["#0b5cad", "#bf3989", "#1a7f37", "#9a6700", "#8250df", "#cf222e", "#0969da", "#57606a"];
const pct = (v) => (v === null || v === undefined ? "–" : `${(100 * v).toFixed(0)} %`);

function cells(tr, values, tag = "td") {
  for (const v of values) {
    const cell = document.createElement(tag);
    if (tag === "th") cell.scope = "row";
    cell.textContent = v;
    tr.append(cell);
  }
  return tr;
}

async function refreshClasses() {
  try {
    showClasses(await json(`/v1/quality/classes?hours=24&source=${$("classes-source").value}`));
  } catch (err) {
    $("classes-summary").textContent = `Not read: ${err.message}`;
  }
}

function showClasses(q) {
  state.classes = q;
  $("classes-summary").textContent = q.n
    ? `Version ${q.version}: ${q.n} labels, accuracy ${pct(q.accuracy)}.`
    : `Version ${q.version}: no labels of this kind in the last day.`;
  const head = document.createElement("tr");
  cells(head, ["label ↓ said →", ...q.classes], "th");
  head.querySelectorAll("th").forEach((th) => { th.scope = "col"; });
  $("confusion").tHead.replaceChildren(head);
  $("confusion").tBodies[0].replaceChildren(
    ...q.confusion.map((row, i) => {
      const tr = document.createElement("tr");
      cells(tr, [q.classes[i]], "th");
      const total = row.reduce((a, b) => a + b, 0) || 1;
      row.forEach((n, j) => {
        const td = document.createElement("td");
        td.textContent = n;
        const share = n / total; // shaded by the row's share: where each label's images went
        td.style.background = `rgba(${i === j ? "26,127,55" : "207,34,46"},${(0.6 * share).toFixed(2)})`;
        td.title = `${n} labeled ${q.classes[i]}, said ${q.classes[j]} (${pct(share)} of the row)`;
        tr.append(td);
      });
      return tr;
    }),
  );
  $("per-class").tBodies[0].replaceChildren(
    ...q.per_class.map((c) => {
      const tr = document.createElement("tr");
      cells(tr, [c.class], "th");
      return cells(tr, [c.labeled, c.predicted, pct(c.precision), pct(c.recall)]);
    }),
  );
  drawMix(q);
}

function drawMix(q) {
  // stacked bars of the predicted classes per bucket, and the mean confidence as a line on top
  const svg = $("mix-chart");
  svg.replaceChildren();
  const n = q.mix.counts.length;
  const bw = W / n;
  const colour = (c) => PALETTE[q.classes.indexOf(c) % PALETTE.length];
  q.mix.counts.forEach((counts, b) => {
    const total = Object.values(counts).reduce((a, v) => a + v, 0);
    let y0 = 120;
    for (const c of q.classes) {
      if (!counts[c]) continue;
      const h = (110 * counts[c]) / total;
      y0 -= h;
      svg.append(svgEl("rect", { x: b * bw + 1, y: y0, width: bw - 2, height: h, fill: colour(c) }, `${counts[c]} said ${c}`));
    }
  });
  const pts = q.mix.confidence.map((c, b) => (c === null ? null : `${(b + 0.5) * bw},${120 - 110 * c}`)).filter(Boolean);
  if (pts.length > 1) svg.append(svgEl("polyline", { points: pts.join(" "), class: "confidence" }, "mean confidence"));
  $("mix-legend").replaceChildren(
    ...q.classes.flatMap((c) => {
      const sw = document.createElement("span");
      sw.className = "swatch";
      sw.style.background = colour(c);
      return [sw, document.createTextNode(c)];
    }),
    document.createTextNode(` · the black line is the mean top-class confidence (0 to 1) · from ${when(q.mix.since)} to ${when(q.mix.until)}`),
  );
}

function drawAgreement(a) {
  // the share of labels that agreed with the model, per bucket and source (gaps: no labels)
  state.agreement = a;
  const svg = $("agreement-chart");
  svg.replaceChildren();
  for (const share of [0.5, 1]) svg.append(svgEl("line", { x1: 0, x2: 600, y1: 95 - 90 * share, y2: 95 - 90 * share, class: "grid", stroke: "#d0d7de" }));
  const said = [];
  for (const source of ["user", "reviewer"]) {
    const buckets = a[source];
    const bw = 600 / buckets.length;
    const pts = buckets.map((b, i) => (b.n ? `${(i + 0.5) * bw},${95 - (90 * b.agree) / b.n}` : null)).filter(Boolean);
    const n = buckets.reduce((t, b) => t + b.n, 0);
    const agree = buckets.reduce((t, b) => t + b.agree, 0);
    if (pts.length) svg.append(svgEl("polyline", { points: pts.length > 1 ? pts.join(" ") : `${pts[0]} ${pts[0]}`, class: source }, `${source}s: ${agree} of ${n} agreed`));
    said.push(`${source}s: ${n ? `${agree} of ${n} agreed (${pct(agree / n)})` : "no labels"}`);
  }
  $("agreement-legend").textContent = `${said.join(" · ")}. Solid: users' labels; dashed: reviewers' (hard items, so lower); from ${when(a.since)} to ${when(a.until)}.`;
}

function showReviewers(q) {
  state.reviewers = q;
  const none = (cols, text) => {
    const tr = document.createElement("tr");
    const td = document.createElement("td");
    td.colSpan = cols;
    td.textContent = text;
    tr.append(td);
    return [tr];
  };
  $("gold").tBodies[0].replaceChildren(
    ...(q.gold.length
      ? q.gold.map((g) => cells(cells(document.createElement("tr"), [g.reviewer], "th"), [g.answered, `${g.correct} (${pct(g.accuracy)})`]))
      : none(3, "No gold item answered yet (NICHELOOP_REVIEW_GOLD_SHARE mixes them in).")),
  );
  $("kappa").tBodies[0].replaceChildren(
    ...(q.pairs.length
      ? q.pairs.map((p) => cells(cells(document.createElement("tr"), [p.reviewers.join(" · ")], "th"),
        [p.items, p.agreed, p.kappa === null ? "–" : p.kappa.toFixed(2)]))
      : none(4, "No item labeled by two reviewers yet (NICHELOOP_REVIEW_OVERLAP_SHARE gives some a second one).")),
  );
}

async function refreshVersions() {
  const res = await call("/v1/quality/versions");
  if (res.status === 404) {
    $("versions-summary").textContent = "No rollout yet.";
    return;
  }
  if (!res.ok) {
    $("versions-summary").textContent = `Not read: ${res.status}`;
    return;
  }
  showVersions(await res.json());
}

async function showVersions(v) {
  state.versions = v;
  const same = v.same_images;
  $("versions-summary").textContent = `Rollout ${v.rollout_id} (${v.state}): version ${v.champion} against ${v.candidate}. ` +
    `${v.shadow_pairs} images answered by both, ${v.disagreements} with different answers; ` +
    `on the ${same.candidate.n} of them that were labeled: champion ${pct(same.champion.accuracy)}, candidate ${pct(same.candidate.accuracy)}.`;
  $("versions-classes").tBodies[0].replaceChildren(
    ...same.candidate.per_class.map((c, i) => {
      const before = same.champion.per_class[i].recall;
      const tr = document.createElement("tr");
      cells(tr, [c.class], "th");
      cells(tr, [c.labeled, pct(before), pct(c.recall)]);
      const delta = c.recall === null || before === null ? null : c.recall - before;
      const td = cells(tr, [delta === null ? "–" : `${delta >= 0 ? "+" : ""}${(100 * delta).toFixed(0)} points`]).lastChild;
      if (delta) td.className = delta > 0 ? "delta-up" : "delta-down";
      return tr;
    }),
  );
  rows($("lineage-champion"), Object.entries(v.lineage[v.champion] || {}));
  rows($("lineage-candidate"), Object.entries(v.lineage[v.candidate] || {}));
  const figures = await Promise.all(
    v.gallery.map(async (g) => {
      const src = g.image ? await loadImage(`/v1/images/${g.image}`) : "";
      if (!src) return null;
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = src;
      img.alt = `The champion said ${g.champion}, the candidate ${g.candidate}`;
      const cap = document.createElement("figcaption");
      cap.textContent = `champion ${g.champion} · candidate ${g.candidate}${g.truth ? ` · label ${g.truth}` : ""}`;
      fig.append(img, cap);
      return fig;
    }),
  );
  $("gallery").replaceChildren(...figures.filter(Boolean));
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

function showReview(r) {
  rows($("review"), [
    ["queued", r.queued],
    ["in review", r.in_review],
    ["labeled, last hour", r.labeled_last_hour],
    ["labeled, last day", r.labeled_last_day],
    ["median seconds a label", r.median_seconds_per_label ?? "–"],
    ["skips", `${r.skips} (${pct(r.skip_rate)} of decisions)`],
    ["leases run out, now", r.lapsed_leases],
    ["expired unlabeled", r.expired],
    ["oldest waiting", r.oldest_queued_age_s === null ? "–" : `${Math.round(r.oldest_queued_age_s / 60)} min`],
    ["budget left this hour", `${r.budget.left_hour} of ${r.budget.per_hour}`],
  ]);
}

// -- acting -------------------------------------------------------------------------------------
const ACTS = {
  start: "Start the candidate in shadow",
  pause: "Pause the rollout",
  resume: "Resume the rollout",
  "policy-pause": "Pause the retraining policy (it still decides, starts no run)",
  "policy-resume": "Let the retraining policy start runs again",
  rollback: "Roll the candidate back",
  promote: "Promote the candidate now, skipping the remaining gates",
};

function ask(action) {
  state.action = action;
  $("confirm-title").textContent = `${ACTS[action]}?`;
  $("confirm-what").textContent = action === "promote" ? "A forced promotion needs a reason." : "";
  $("version-label").hidden = $("confirm-version").hidden = action !== "start";
  $("confirm-reason").value = "";
  $("act-result").textContent = $("policy-result").textContent = "";
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
  const path = action.startsWith("policy-") ? `/v1/policy/${action.slice(7)}` : `/v1/rollouts/${action}`;
  const res = await call(path, { method: "POST", body });
  const answer = await res.json().catch(() => ({}));
  const now = answer.state ?? (answer.paused ? "paused" : "acting");
  const why = typeof answer.detail === "string" ? answer.detail : JSON.stringify(answer.detail ?? "");
  const result = $(action.startsWith("policy-") ? "policy-result" : "act-result");
  result.textContent = res.ok ? `${ACTS[action]}: done (${now}).` : `${ACTS[action]}: refused (${res.status}): ${why}`;
  result.className = res.ok ? "ok" : "refused";
  refresh();
}

// the budgets (counts) and the gold and overlap shares (percent on the page, fractions in the API)
// (a form the operator has begun to edit keeps their values until it is sent: a refresh between two
// fields used to put the first back to the stored value)
function fillForm(id, values, scale) {
  const form = $(id);
  if (form.dataset.edited) return;
  for (const [name, value] of Object.entries(values)) {
    const input = form.elements.namedItem(name);
    if (input && document.activeElement !== input) input.value = Math.round(value * scale * 100) / 100;
  }
}

async function submitForm(event, path, scale, done) {
  event.preventDefault();
  const form = event.target;
  const body = {};
  for (const input of form.querySelectorAll("input")) {
    if (input.value !== "") body[input.name] = Number(input.value) / scale;
  }
  const res = await call(path, { method: "PUT", body });
  const answer = await res.json().catch(() => ({}));
  form.nextElementSibling.textContent = res.ok ? done : `Refused (${res.status}): ${JSON.stringify(answer.detail)}`;
  if (res.ok) delete form.dataset.edited; // a refused form keeps the values to correct
  refresh();
}

// -- start --------------------------------------------------------------------------------------
for (const button of document.querySelectorAll("#controls button, #policy-controls button")) {
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
for (const id of ["budget-form", "shares-form"]) {
  $(id).addEventListener("input", () => { $(id).dataset.edited = "1"; });
}
$("budget-form").addEventListener("submit", (e) => submitForm(e, "/v1/review/budget", 1, "Budgets set."));
$("shares-form").addEventListener("submit", (e) => submitForm(e, "/v1/review/shares", 100, "Shares set."));
$("classes-source").addEventListener("change", refreshClasses);
signInFor("operator", start);
