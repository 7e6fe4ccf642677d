// The reviewer page: one keystroke per decision. Tasks are leased and their images loaded ahead,
// decisions are sent in the background in order with retries, a decision that does not land stays
// on the page, and Backspace relabels the last item while its lease holds.

import { $, call, loadImage, signInFor, signedIn } from "/pages/common.js";

const AHEAD = 3; // tasks leased and loaded beyond the one on screen
const RETRIES = 6; // sends of one decision before it is shown as failed (backoff doubles from 0.5 s)
const UNDO_DEPTH = 20; // decisions Backspace can reach; an older label gives its lease back
const SKIP_REASONS = ["unsure", "not a defect image", "image unreadable", "other"];

const state = {
  current: null, // the task on screen
  waitingSince: undefined, // when a decision found no item loaded yet (its time runs on)
  ahead: [], // tasks leased and loaded, in order
  filling: false,
  emptyUntil: 0, // the queue was empty or the budget spent: ask again after this
  history: [], // decisions, newest last: {task, label | null, at}
  outbox: [], // decisions not yet confirmed, in the order made
  sending: false,
  failed: [], // decisions that did not land: kept and shown, never dropped
  confirmed: 0,
  view: { zoom: 1, x: 0, y: 0, contrast: 1 },
  saliency: { on: false, ms: [] }, // the Grad-CAM shown instead of the image; milliseconds each took
  mode: "work", // work | skip | help
  timings: [], // ms from a decision's key to the next image on screen (benchmarks/review_ui.py)
  shownAt: 0,
  decisionTimes: [], // seconds each decision took, for the median
};
window.nicheloopReview = state; // read by the browser tests and the benchmark

function show(section) {
  for (const id of ["signin", "work", "empty"]) $(id).hidden = id !== section;
}

// -- signing in -------------------------------------------------------------------------------
async function start() {
  show("work");
  await fill(); // shows the first task as soon as it is loaded
  if (!state.current) next();
  setInterval(renewLeases, 30_000);
  setInterval(refreshStats, 10_000);
  setInterval(showLease, 1_000);
  refreshStats();
}

// -- leasing ahead ----------------------------------------------------------------------------
async function fill() {
  if (state.filling) return;
  state.filling = true;
  try {
    while (state.ahead.length < AHEAD && Date.now() >= state.emptyUntil) {
      const res = await call("/v1/review/next");
      if (res.status === 204) {
        state.emptyUntil = Date.now() + 5_000;
        $("empty-title").textContent = "Nothing to review";
        $("empty-why").textContent = "The queue is empty; new items are looked for every 5 s.";
        break;
      }
      if (res.status === 429) {
        const wait = Number(res.headers.get("Retry-After") || "60");
        state.emptyUntil = Date.now() + wait * 1000;
        $("empty-why").textContent = `${(await res.json()).detail}`;
        break;
      }
      if (!res.ok) {
        state.emptyUntil = Date.now() + 5_000;
        $("empty-why").textContent = `The service answered ${res.status}; trying again in 5 s.`;
        break;
      }
      const task = await res.json();
      task.image = await loadImage(task.image_url);
      // its labeled look-alikes load behind it: they never hold up the next image
      task.similarReady = Promise.all((task.similar || []).map((n) => loadImage(n.image_url)));
      state.ahead.push(task);
      if (!state.current) next();
    }
  } finally {
    state.filling = false;
  }
}

setInterval(() => {
  if (signedIn() && !state.filling && Date.now() >= state.emptyUntil && state.ahead.length < AHEAD) {
    fill().then(() => state.current || next());
  }
}, 1_000);

// -- the item on screen -------------------------------------------------------------------------
function next(startedAt) {
  state.current = state.ahead.shift() || null;
  const since = startedAt ?? state.waitingSince; // a key pressed while the next item was loading
  if (!state.current) {
    state.waitingSince = since;
    const waiting = state.filling || Date.now() >= state.emptyUntil;
    $("empty-title").textContent = waiting ? "Loading the next item…" : "Nothing to review";
    if (waiting) $("empty-why").textContent = "";
    show("empty");
    fill();
    return;
  }
  state.waitingSince = undefined;
  show("work");
  render(state.current);
  if (since !== undefined) {
    requestAnimationFrame(() => state.timings.push(performance.now() - since));
  }
  state.shownAt = performance.now();
  fill();
}

function letters(classes) {
  // every class a letter of its own name where one is free, else any free letter
  const taken = new Set(["r"]);
  const keys = {};
  for (const name of classes) {
    const own = [...name.toLowerCase()].find((ch) => /[a-z]/.test(ch) && !taken.has(ch));
    const key = own || [..."abcdefghijklmnopqstuvwxyz"].find((ch) => !taken.has(ch));
    if (key) {
      taken.add(key);
      keys[name] = key;
    }
  }
  return keys;
}

function render(task) {
  state.saliency.on = false;
  $("saliency-note").textContent = "";
  $("image").src = task.image;
  $("image").alt = `Image of review task ${task.task_id}, predicted ${task.predicted_label}`;
  resetView();
  $("why").textContent = `Why this item: ${task.why}`;
  showSimilar(task);
  const ranked = task.class_names
    .map((name, i) => ({ name, p: task.probs[i] ?? 0 }))
    .sort((a, b) => b.p - a.p)
    .slice(0, 3);
  task.top = ranked.map((r) => r.name);
  $("top").replaceChildren(
    ...ranked.map((r, i) => {
      const li = document.createElement("li");
      const button = choice(r.name, r.name);
      const bar = document.createElement("div");
      bar.className = "bar";
      bar.setAttribute("aria-hidden", "true");
      const fill = document.createElement("span");
      fill.style.width = `${(100 * r.p).toFixed(1)}%`;
      bar.append(fill);
      const pct = document.createElement("span");
      pct.textContent = `${(100 * r.p).toFixed(0)} %`;
      const key = document.createElement("kbd");
      key.textContent = String(i + 1);
      button.prepend(key, " ");
      li.append(button, bar, pct);
      return li;
    }),
  );
  task.keys = letters(task.class_names);
  $("classes").replaceChildren(
    ...task.class_names.map((name) => {
      const li = document.createElement("li");
      const key = task.keys[name];
      const button = choice(name, null);
      const at = key ? name.toLowerCase().indexOf(key) : -1;
      if (at >= 0) {
        const u = document.createElement("u");
        u.textContent = name[at];
        button.append(name.slice(0, at), u, name.slice(at + 1));
      } else {
        button.append(name, key ? ` (${key})` : "");
      }
      li.append(button);
      return li;
    }),
  );
  showLease();
}

function choice(label, text) {
  const button = document.createElement("button");
  button.type = "button";
  button.className = "choice";
  if (text) button.append(text);
  button.addEventListener("click", () => decide(label, performance.now()));
  return button;
}

function showLease() {
  const task = state.current;
  if (!task) return;
  const left = Math.round((new Date(task.lease_expires_at) - Date.now()) / 1000);
  $("lease").textContent = left > 0 ? `Lease: ${Math.floor(left / 60)}:${String(left % 60).padStart(2, "0")} left` : "Lease expired: this item may go to someone else";
  $("lease").className = left < 60 ? "short" : "";
}

// -- deciding -----------------------------------------------------------------------------------
function decide(label, startedAt) {
  const task = state.current;
  if (!task) return;
  state.decisionTimes.push((performance.now() - state.shownAt) / 1000);
  remember({ task, label, at: Date.now() });
  enqueue({ kind: "label", task, label });
  next(startedAt);
}

function skip(reason, startedAt) {
  const task = state.current;
  if (!task) return;
  remember({ task, label: null, at: Date.now() });
  enqueue({ kind: "skip", task, reason });
  next(startedAt);
}

function remember(decision) {
  state.history.push(decision);
  if (state.history.length > UNDO_DEPTH) release(state.history.shift());
}

// a labeled decision out of undo's reach gives its lease back: an item another reviewer is to label
// too (overlap) goes on now, not when the lease runs out; if this fails, the lease simply runs out
function release(decision) {
  if (decision.label === null) return; // a skip gave its task back already
  call(`/v1/review/${decision.task.task_id}/release`, {
    method: "POST",
    body: { lease_token: decision.task.lease_token },
  }).catch(() => {});
}

function undo() {
  const last = state.history.at(-1);
  if (!last) return say("Nothing to undo.");
  if (last.label === null) return say("A skip cannot be undone: the item went back to the queue.");
  if (new Date(last.task.lease_expires_at) <= Date.now()) return say("Its lease ran out: it cannot be relabeled.");
  state.history.pop();
  if (state.current) state.ahead.unshift(state.current);
  state.current = last.task;
  show("work");
  render(last.task);
  state.shownAt = performance.now();
  say(`Undone: ${last.label}. Label it again.`);
}

// -- sending ------------------------------------------------------------------------------------
function enqueue(decision) {
  decision.tries = 0;
  state.outbox.push(decision);
  showOutbox();
  pump();
}

async function pump() {
  if (state.sending) return;
  state.sending = true;
  try {
    while (state.outbox.length) {
      const d = state.outbox[0];
      const verdict = await send(d);
      if (verdict === "retry") {
        d.tries += 1;
        if (d.tries < RETRIES) {
          await new Promise((r) => setTimeout(r, 500 * 2 ** (d.tries - 1)));
          continue;
        }
        d.why = "the service did not answer";
      }
      state.outbox.shift();
      if (verdict === "ok") state.confirmed += 1;
      else state.failed.push(d);
      showOutbox();
    }
  } finally {
    state.sending = false;
  }
}

async function send(d) {
  const path = d.kind === "label" ? `/v1/review/${d.task.task_id}` : `/v1/review/${d.task.task_id}/skip`;
  const body = d.kind === "label"
    ? { label: d.label, lease_token: d.task.lease_token }
    : { lease_token: d.task.lease_token, reason: d.reason };
  let res;
  try {
    res = await call(path, { method: "POST", body });
  } catch {
    return "retry"; // the network: try again
  }
  if (res.ok) return "ok";
  if (res.status === 429 || res.status >= 500) return "retry";
  d.why = (await res.json().catch(() => ({}))).detail || `answered ${res.status}`;
  return "failed";
}

function showOutbox() {
  const waiting = state.outbox.length;
  $("outbox").textContent = `${state.confirmed} saved` + (waiting ? `, ${waiting} sending` : "");
  $("failed").replaceChildren(
    ...state.failed.map((d) => {
      const li = document.createElement("li");
      const what = d.kind === "label" ? `label ${d.label}` : `skip (${d.reason})`;
      li.textContent = `Task ${d.task.task_id}, ${what}: not saved (${d.why}). Press r to send again.`;
      return li;
    }),
  );
}

function resend() {
  const again = state.failed.splice(0);
  for (const d of again) enqueue(d);
}

async function renewLeases() {
  const held = [state.current, ...state.ahead].filter(Boolean);
  for (const task of held) {
    const res = await call(`/v1/review/${task.task_id}/renew`, {
      method: "POST",
      body: { lease_token: task.lease_token },
    }).catch(() => null);
    if (res && res.ok) task.lease_expires_at = (await res.json()).lease_expires_at;
  }
}

async function refreshStats() {
  const res = await call("/v1/review/stats").catch(() => null);
  if (!res || !res.ok) return;
  const s = await res.json();
  const times = [...state.decisionTimes].sort((a, b) => a - b);
  const median = times.length ? times[Math.floor(times.length / 2)].toFixed(1) : "–";
  const minutes = state.decisionTimes.reduce((a, b) => a + b, 0) / 60;
  const rate = minutes > 0 ? (state.history.length / minutes).toFixed(1) : "–";
  $("throughput").textContent =
    `${state.decisionTimes.length} done here · ${rate} a minute · median ${median} s · ` +
    `${s.queued} queued · budget ${s.budget.left_hour} this hour`;
}

function say(message) {
  $("outbox").textContent = message;
}

// -- looking closer -----------------------------------------------------------------------------
function resetView() {
  state.view = { zoom: 1, x: 0, y: 0, contrast: 1 };
  applyView();
}

function applyView() {
  const v = state.view;
  $("image").style.transform = `translate(${v.x}px, ${v.y}px) scale(${v.zoom})`;
  $("image").style.filter = `contrast(${v.contrast})`;
}

// -- labeled look-alikes ------------------------------------------------------------------------------
function showSimilar(task) {
  // the nearest already-labeled images (the sampler's FAISS index) with their labels
  $("similar").replaceChildren();
  $("similar-title").hidden = !(task.similar || []).length;
  task.similarReady.then((sources) => {
    if (state.current !== task) return;
    $("similar").replaceChildren(
      ...task.similar.map((n, i) => {
        if (!sources[i]) return document.createTextNode("");
        const fig = document.createElement("figure");
        const img = document.createElement("img");
        img.src = sources[i];
        img.alt = `A labeled image like this one: ${n.label}`;
        const cap = document.createElement("figcaption");
        cap.textContent = `${n.label} · ${(100 * n.similarity).toFixed(0)}\u00a0%`;
        fig.append(img, cap);
        return fig;
      }),
    );
    state.similarShown = task.task_id;
  });
}

// -- where the model looked ------------------------------------------------------------------------
async function toggleSaliency() {
  // the served model's Grad-CAM over the image as it saw it, computed once by the service
  const task = state.current;
  if (state.saliency.on) {
    state.saliency.on = false;
    $("image").src = task.image;
    $("saliency-note").textContent = "";
    return;
  }
  const started = performance.now();
  if (!task.saliency) {
    $("saliency-note").textContent = "Asking where the model looked…";
    const res = await call(`${task.image_url}/saliency`).catch(() => null);
    if (!res || !res.ok) {
      const answer = res ? await res.json().catch(() => ({})) : {};
      $("saliency-note").textContent = `No saliency for this item: ${answer.detail ?? "the service did not answer"}`;
      return;
    }
    task.saliency = URL.createObjectURL(await res.blob());
    task.saliencyOf = { version: res.headers.get("x-model-version"), label: res.headers.get("x-saliency-class") };
  }
  if (state.current !== task) return; // the reviewer moved on meanwhile
  const img = $("image");
  img.src = task.saliency;
  await img.decode().catch(() => {});
  state.saliency.on = true;
  state.saliency.ms.push(performance.now() - started);
  $("saliency-note").textContent = `Where version ${task.saliencyOf.version} looked for ${task.saliencyOf.label}: ` +
    "red to yellow is the strongest evidence, on the image as the model saw it. Press . again for the image.";
}

// -- keys ---------------------------------------------------------------------------------------
function onKey(event) {
  if (!signedIn() || $("signin").hidden === false) return;
  if (!state.current && state.mode === "work" && !["?", "Backspace", "r"].includes(event.key)) return;
  const at = performance.now();
  const key = event.key;
  if (state.mode === "help") {
    if (key === "Escape" || key === "?") toggle("help");
    event.preventDefault();
    return;
  }
  if (state.mode === "skip") {
    const n = Number(key);
    if (n >= 1 && n <= SKIP_REASONS.length) {
      toggle("skip");
      skip(SKIP_REASONS[n - 1], at);
    } else if (key === "Escape") {
      toggle("skip");
    }
    event.preventDefault();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  const task = state.current;
  const v = state.view;
  const handled = {
    Enter: () => decide(task.top[0], at),
    1: () => decide(task.top[0], at),
    2: () => task.top[1] && decide(task.top[1], at),
    3: () => task.top[2] && decide(task.top[2], at),
    "/": () => toggle("skip"),
    "?": () => toggle("help"),
    Backspace: () => undo(),
    "+": () => { v.zoom = Math.min(8, v.zoom * 1.25); applyView(); },
    "=": () => { v.zoom = Math.min(8, v.zoom * 1.25); applyView(); },
    "-": () => { v.zoom = Math.max(1, v.zoom / 1.25); applyView(); },
    ArrowLeft: () => { v.x += 40; applyView(); },
    ArrowRight: () => { v.x -= 40; applyView(); },
    ArrowUp: () => { v.y += 40; applyView(); },
    ArrowDown: () => { v.y -= 40; applyView(); },
    "[": () => { v.contrast = Math.max(0.25, v.contrast - 0.25); applyView(); },
    "]": () => { v.contrast = Math.min(4, v.contrast + 0.25); applyView(); },
    0: () => resetView(),
    ".": () => toggleSaliency(),
    r: () => resend(),
  }[key];
  if (handled) {
    event.preventDefault();
    handled();
    return;
  }
  const label = task && Object.keys(task.keys).find((name) => task.keys[name] === key.toLowerCase());
  if (label) {
    event.preventDefault();
    decide(label, at);
  }
}

function toggle(mode) {
  const open = state.mode !== mode;
  state.mode = open ? mode : "work";
  $("skip").hidden = state.mode !== "skip";
  $("help").hidden = state.mode !== "help";
}

// -- start --------------------------------------------------------------------------------------
$("skip-reasons").replaceChildren(
  ...SKIP_REASONS.map((reason) => {
    const li = document.createElement("li");
    li.textContent = reason;
    return li;
  }),
);
document.addEventListener("keydown", onKey);
signInFor("reviewer", start);
