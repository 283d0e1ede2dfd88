// The recordings page: a list of calls and one call's timeline, waveforms and player. Plain JavaScript, no
// dependencies. Every data request carries the function key (x-functions-key) the person entered; the key lives in
// this tab's sessionStorage only and never goes into a URL.
"use strict";

const API = document.body.dataset.api || "/api";
const KEY_STORE = "acsrec.functionKey";
const LIST_REFRESH_MS = 4000;
const CALL_REFRESH_MS = 2000;
const WINDOW_S = 4; // the player fetches audio this many seconds at a time (HTTP Range over the stitched WAV)
const AHEAD_S = 8; // and keeps this much scheduled ahead of the playhead
const $ = (id) => document.getElementById(id);

// ---------------------------------------------------------------------------------------------------- the API
class AuthError extends Error {}

function key() { return sessionStorage.getItem(KEY_STORE) || ""; }

async function api(path, { headers = {}, signal, raw = false } = {}) {
  let resp;
  try {
    resp = await fetch(API + path, { headers: { "x-functions-key": key(), ...headers }, signal,
                                     cache: "no-store", credentials: "same-origin" });
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new Error(`the function app did not answer (${err.message})`);
  }
  if (resp.status === 401 || resp.status === 403) {
    throw new AuthError(`The function app refused this key (HTTP ${resp.status}). Check that it is the app's ` +
                        "function key (or its master key) and enter it again.");
  }
  if (raw) return resp;
  if (!resp.ok) {
    let msg = `HTTP ${resp.status}`;
    try { const body = await resp.json(); if (body.error) msg += `: ${body.error.message}`; } catch (_) { /* */ }
    throw new Error(msg);
  }
  return resp.json();
}

function onAuthError(err) {
  sessionStorage.removeItem(KEY_STORE);
  stopTimers();
  showAuth(err.message);
}

// ------------------------------------------------------------------------------------------------ formatting
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "style") Object.assign(node.style, v); // CSSOM: the CSP allows no style attributes
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) node.append(c);
  return node;
}

function clock(s, tenths = true) {
  if (!Number.isFinite(s)) return "–";
  const sign = s < 0 ? "−" : "";
  s = Math.abs(s);
  const m = Math.floor(s / 60);
  const sec = s - m * 60;
  const text = tenths ? sec.toFixed(1).padStart(4, "0") : String(Math.floor(sec)).padStart(2, "0");
  return `${sign}${m}:${text}`;
}

const parseTime = (iso) => (iso ? Date.parse(iso) / 1000 : NaN);
const localTime = (iso) => (iso ? new Date(iso).toLocaleString() : "–");
const pct = (r) => (r === null || r === undefined ? "–" : `${(100 * r).toFixed(r < 1 && r > 0.999 ? 2 : 1)} %`);

function participantName(raw) {
  if (!raw) return "mixed (all participants)";
  return raw;
}

function announce(text) { $("announce").textContent = text; }

// ---------------------------------------------------------------------------------------------------- views
let timers = [];
function stopTimers() { timers.forEach(clearInterval); timers = []; }

function show(id) {
  for (const s of ["auth", "list", "call"]) $(s).hidden = s !== id;
  $("keybar").hidden = id === "auth";
}

function showAuth(message) {
  show("auth");
  $("autherror").textContent = message || "";
  $("key").value = "";
  $("key").focus();
}

$("keyform").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const value = $("key").value.trim();
  if (!value) return;
  sessionStorage.setItem(KEY_STORE, value);
  $("autherror").textContent = "";
  try {
    await api("/recordings?limit=1");
  } catch (err) {
    sessionStorage.removeItem(KEY_STORE);
    $("autherror").textContent = err.message;
    $("key").select();
    return;
  }
  route();
});

$("forget").addEventListener("click", () => {
  sessionStorage.removeItem(KEY_STORE);
  player.stop();
  stopTimers();
  showAuth("The key was forgotten for this tab.");
});

function route() {
  stopTimers();
  player.stop();
  if (!key()) { showAuth(""); return; }
  const m = location.hash.match(/^#\/call\/([^/?#]+)/);
  let id = null;
  try {
    id = m ? decodeURIComponent(m[1]) : null;
  } catch (_) {
    listNotice = "That link does not name a call.";
    openList();
    return;
  }
  if (id) openCall(id);
  else openList();
}
window.addEventListener("hashchange", route);

// -------------------------------------------------------------------------------------------------- the list
const pages = { tokens: [null], index: 0 };
let listNotice = ""; // shown once above the list (e.g. why a link led here)

async function loadList() {
  const token = pages.tokens[pages.index];
  const query = `/recordings?limit=20${token ? `&pageToken=${encodeURIComponent(token)}` : ""}`;
  let body;
  try {
    body = await api(query);
  } catch (err) {
    if (err instanceof AuthError) return onAuthError(err);
    $("list-error").textContent = `Could not load the calls: ${err.message}`;
    return;
  }
  $("list-error").textContent = listNotice;
  listNotice = "";
  pages.tokens[pages.index + 1] = body.nextPageToken || null;
  const rows = body.items.map(listRow);
  $("calls").tBodies[0].replaceChildren(...rows);
  $("list-empty").hidden = rows.length > 0;
  $("newer").disabled = pages.index === 0;
  $("older").disabled = !body.nextPageToken;
  $("list-updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
}

function listRow(item) {
  const start = item.connectedAt || item.createdAt;
  const end = item.disconnectedAt ? parseTime(item.disconnectedAt) : Date.now() / 1000;
  const duration = item.connectedAt ? end - parseTime(item.connectedAt) : NaN;
  const failures = item.failures || [];
  const from = item.direction === "inbound" ? item.source : "us";
  const to = item.direction === "inbound" ? "us" : item.target;
  const status = item.status || "live";
  const coverageBad = item.coverage !== null && item.coverage !== undefined && item.coverage < 1 && item.complete === false;
  return el("tr", { "data-call": item.callConnectionId },
    el("td", { class: "num" }, el("a", { href: `#/call/${encodeURIComponent(item.callConnectionId)}`,
                                          text: localTime(start), title: item.callConnectionId })),
    el("td", { text: item.direction || "–" }),
    el("td", { text: `${from || "?"} → ${to || "?"}` }),
    el("td", { class: "num", text: clock(duration, false) }),
    el("td", { text: item.callStatus || "–" }),
    el("td", {}, el("span", { class: `chip ${status}`, text: status })),
    el("td", { class: coverageBad ? "num bad" : "num", text: pct(item.coverage) }),
    el("td", { class: failures.length ? "bad" : "muted",
               text: failures.length ? failures.map(failureText).join("; ") : "none" }),
  );
}

function failureText(f) {
  const code = [f.code, f.subCode].filter((x) => x !== null && x !== undefined).join("/");
  return `${f.event}${code ? ` (${code})` : ""}`;
}

$("newer").addEventListener("click", () => { pages.index = Math.max(0, pages.index - 1); loadList(); });
$("older").addEventListener("click", () => { pages.index += 1; loadList(); });

function openList() {
  show("list");
  document.title = "Recordings · ACS call recorder";
  loadList();
  timers.push(setInterval(() => { if (!document.hidden) loadList(); }, LIST_REFRESH_MS));
}

// ------------------------------------------------------------------------------------------------- one call
const view = { id: null, doc: null, peaks: null, t0: 0, t1: 1, live: false, busy: false };

async function openCall(id) {
  show("call");
  view.id = id;
  view.doc = view.peaks = null;
  $("call-title").textContent = `Call ${id}`;
  document.title = `Call ${id} · Recordings`;
  $("call-error").textContent = "";
  ["call-facts", "lanes", "integrity", "files", "marks", "sessions", "dtmf", "holes", "ruler"]
    .forEach((x) => $(x).replaceChildren());
  await refreshCall(true);
  timers.push(setInterval(() => {
    if (document.hidden) return;
    // a ready call's finished-file links are short-lived read URLs: fetch fresh ones a minute before they expire
    const expires = parseTime(view.doc?.urlsExpireAt);
    if (view.live || (Number.isFinite(expires) && expires - Date.now() / 1000 < 60)) refreshCall(false);
  }, CALL_REFRESH_MS));
  $("main").focus();
}

// While a call is live, only the peaks of the newest chunks are asked for (fromSeq: the last chunk again, which
// may have grown, and what came after) and joined to what the page has; a new stream, or the recording becoming
// ready, fetches everything once more.
function peaksFrom(first) {
  const prev = view.peaks;
  const seconds = view.doc?.manifest?.chunkSeconds;
  if (first || !prev || !seconds || prev.pointsPerSecond !== 10) return 0;
  const perChunk = Math.round(seconds * 10);
  const longest = Math.max(0, ...prev.streams.map((s) => s.levels.length));
  return Math.max(0, Math.floor(longest / perChunk) - 1);
}

function joinPeaks(prev, next) {
  if (!next.firstPoint) return next;
  const old = new Map(prev.streams.map((s) => [s.stream, s.levels]));
  if (next.streams.some((s) => !old.has(s.stream))) return null;
  const streams = prev.streams.map((p) => {
    const got = next.streams.find((s) => s.stream === p.stream);
    if (!got) return p;
    const head = p.levels.slice(0, next.firstPoint);
    while (head.length < next.firstPoint) head.push(-1);
    return { ...p, levels: head.concat(got.levels) };
  });
  return { ...next, streams, firstPoint: 0 };
}

async function refreshCall(first) {
  if (view.busy && !first) return; // the previous refresh is still on its way (a slow answer)
  const id = view.id;
  const path = `/recordings/${encodeURIComponent(id)}`;
  let doc, peaks;
  view.busy = true;
  try {
    const from = peaksFrom(first);
    [doc, peaks] = await Promise.all([api(path), api(`${path}/peaks?pointsPerSecond=10&fromSeq=${from}`)]);
    if (from > 0) peaks = doc.status === "ready" ? null : joinPeaks(view.peaks, peaks);
    if (!peaks) peaks = await api(`${path}/peaks?pointsPerSecond=10`);
  } catch (err) {
    if (err instanceof AuthError) return onAuthError(err);
    $("call-error").textContent = `Could not load this call: ${err.message}`;
    return;
  } finally {
    view.busy = false;
  }
  if (id !== view.id) return;
  $("call-error").textContent = "";
  const wasLive = view.live;
  view.doc = doc;
  view.peaks = peaks;
  view.live = doc.status !== "ready";
  layout();
  renderFacts();
  renderTimeline(first);
  renderIntegrity();
  renderFiles();
  $("live").hidden = doc.status !== "live";
  if (wasLive && !view.live) announce("The recording is ready.");
}

function origin() { return parseTime(view.peaks?.clockOrigin || view.doc?.manifest?.clockOrigin); }

// The timeline spans the connected call and every stream, in seconds of the call clock (0 = clock origin).
function layout() {
  const o = origin();
  const cs = view.doc.callState || {};
  let t0 = 0;
  let t1 = 1;
  for (const s of view.peaks.streams) t1 = Math.max(t1, s.levels.length / view.peaks.pointsPerSecond);
  if (Number.isFinite(o)) {
    const from = parseTime(cs.connectedAt);
    const to = cs.disconnectedAt ? parseTime(cs.disconnectedAt) : (view.doc.status === "live" ? Date.now() / 1000 : NaN);
    if (Number.isFinite(from)) t0 = Math.min(t0, from - o);
    if (Number.isFinite(to)) t1 = Math.max(t1, to - o);
  }
  view.t0 = Math.floor(t0);
  view.t1 = Math.max(view.t0 + 1, t1);
  const scrub = $("scrub");
  scrub.setAttribute("aria-valuemin", view.t0.toFixed(3));
  scrub.setAttribute("aria-valuemax", view.t1.toFixed(3));
}

const frac = (t) => (t - view.t0) / (view.t1 - view.t0);
const at = (t) => `${(100 * Math.min(1, Math.max(0, frac(t)))).toFixed(3)}%`;

function renderFacts() {
  const d = view.doc;
  const cs = d.callState || {};
  const m = d.manifest || {};
  const facts = [
    ["Direction", cs.direction || "–"],
    [cs.direction === "inbound" ? "From" : "To", (cs.direction === "inbound" ? cs.source : cs.target) || "–"],
    ["Call", `${cs.status || "–"}; connected ${localTime(cs.connectedAt)}, disconnected ${localTime(cs.disconnectedAt)}`],
    ["Streaming", `${cs.streaming || "–"}; started ${localTime(cs.streamingStartedAt)}` +
                  (cs.streamingStoppedAt ? `, stopped ${localTime(cs.streamingStoppedAt)}` : "")],
    ["Audio", m.sampleRate ? `${m.audioChannel || cs.audioChannel || "?"}, ${m.sampleRate / 1000} kHz, ` +
                             `${(d.manifest?.streams || []).length} stream(s), chunks of ${m.chunkSeconds} s` : "no audio yet"],
    ["Call clock", m.clockOrigin ? `0:00 = ${localTime(m.clockOrigin)} (${m.clockOrigin})` : "–"],
  ];
  $("call-facts").replaceChildren(...facts.flatMap(([k, v]) => [el("dt", { text: k }), el("dd", { text: v })]));
  const chip = $("call-status");
  chip.className = `chip ${d.status}`;
  chip.textContent = d.status;
}

function renderTimeline(first) {
  const o = origin();
  // ruler
  const span = view.t1 - view.t0;
  const most = Math.max(2, Math.floor($("ruler").clientWidth / 56)); // ticks that fit without overlapping
  const step = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 1800, 3600].find((s) => span / s <= most) || 7200;
  const ticks = [];
  for (let t = Math.ceil(view.t0 / step) * step; t <= view.t1; t += step) {
    ticks.push(el("span", { class: frac(t) > 0.97 ? "end" : null, style: { left: at(t) }, text: clock(t, false) }));
  }
  $("ruler").replaceChildren(...ticks);
  // call events
  const cs = view.doc.callState || {};
  const marks = [["connected", cs.connectedAt], ["streaming started", cs.streamingStartedAt],
                 ["streaming stopped", cs.streamingStoppedAt], ["disconnected", cs.disconnectedAt]]
    .filter(([, iso]) => iso && Number.isFinite(o))
    .map(([name, iso], i) => {
      const t = parseTime(iso) - o;
      const side = frac(t) > 0.6 ? "end" : ""; // labels near the right edge hang to the left of their line
      return el("span", { class: `${i % 2 ? "low" : ""} ${side}`.trim() || null, style: { left: at(t) },
                          title: `${name} ${iso}`, text: name });
    });
  $("marks").replaceChildren(...marks);
  // streaming sessions and replicas
  const incomplete = new Set(view.doc.completeness?.incompleteSessions || []);
  const sessions = (view.doc.manifest?.sessions || []).filter((s) => s.coveredFrom || s.startedAt).map((s) => {
    const from = parseTime(s.coveredFrom || s.startedAt) - o;
    const to = (s.coveredUntil || s.endedAt) ? parseTime(s.coveredUntil || s.endedAt) - o : view.t1;
    const label = `${s.replica || "replica ?"}${s.endReason ? ` · ${s.endReason}` : " · open"}`;
    return el("span", { class: incomplete.has(s.id) ? "incomplete" : null,
                        style: { left: at(from), width: `calc(${at(to)} - ${at(from)})` },
                        title: `session ${s.id} on ${s.replica || "?"}: ${s.startedAt || "?"} – ${s.endedAt || "open"}`,
                        text: label });
  });
  $("sessions").replaceChildren(...sessions);
  // DTMF tones: buttons, so a keyboard can seek to them
  const tones = (view.doc.manifest?.dtmf || []).filter((d) => d.timestamp || d.receivedAt).map((d) => {
    const t = parseTime(d.timestamp || d.receivedAt) - o;
    return el("button", { type: "button", style: { left: at(t) }, "data-time": t.toFixed(3), "data-tone": d.tone,
                          "aria-label": `DTMF ${d.tone} at ${clock(t)}${d.participantRawId ? ` from ${d.participantRawId}` : ""}`,
                          title: `DTMF ${d.tone} at ${clock(t)}`, text: d.tone,
                          onclick: () => seek(t) });
  });
  $("dtmf").replaceChildren(...tones);
  // holes
  const holes = (view.doc.completeness?.holes || []).map((h) => {
    const from = parseTime(h.startTime) - o;
    const to = parseTime(h.endTime) - o;
    return el("div", { class: h.expected ? "expected" : null, title: holeText(h),
                       style: { left: at(from), width: `calc(${at(to)} - ${at(from)})` } },
              el("span", { text: holeText(h) }));
  });
  $("holes").replaceChildren(...holes);
  // lanes
  const lanes = $("lanes");
  const existing = new Map([...lanes.children].map((n) => [n.dataset.stream, n]));
  const order = view.peaks.streams.map((s) => {
    let lane = existing.get(s.stream);
    if (!lane) lane = makeLane(s);
    return lane;
  });
  if (first || order.some((n, i) => lanes.children[i] !== n)) lanes.replaceChildren(...order);
  view.peaks.streams.forEach((s, i) => drawLane(order[i].querySelector("canvas"), s));
  movePlayhead();
}

function holeText(h) {
  const code = [h.code, h.subCode].filter((x) => x !== null && x !== undefined).join("/");
  const cause = h.cause.replaceAll("_", " ");
  return `${cause}${code ? ` ${code}` : ""}${h.healed ? " (healed)" : ""} · ${(h.durationMs / 1000).toFixed(1)} s`;
}

function makeLane(s) {
  const name = participantName(s.participantRawId);
  const box = el("input", { type: "checkbox", checked: true, "aria-label": `Play ${name}`,
                            onchange: () => player.setEnabled(s.stream, box.checked) });
  const canvas = el("canvas", { role: "img", "aria-label": `Waveform of ${name}` });
  const solo = el("button", { type: "button", class: "solo", text: "only this",
                              "aria-label": `Play only ${name}`, onclick: () => player.solo(s.stream) });
  return el("div", { class: "lane", "data-stream": s.stream, "data-participant": s.participantRawId || "" },
    el("div", { class: "lane-label" }, el("label", { title: name }, box, el("span", { text: name })), solo), canvas);
}

// A lane is drawn per device pixel column: the loudest received level in the column as a bar around the middle,
// silence the recorder filled as a grey band, spans of unknown peaks in yellow.
function drawLane(canvas, s) {
  const ratio = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * ratio));
  const h = Math.max(1, Math.round(canvas.clientHeight * ratio));
  if (canvas.width !== w) canvas.width = w;
  if (canvas.height !== h) canvas.height = h;
  const g = canvas.getContext("2d");
  g.clearRect(0, 0, w, h);
  const pps = view.peaks.pointsPerSecond;
  const scale = view.peaks.scale;
  const mid = h / 2;
  const css = getComputedStyle(document.documentElement);
  const colors = { audio: css.getPropertyValue("--audio"), filled: css.getPropertyValue("--filled"),
                   unknown: css.getPropertyValue("--unknown") };
  const levels = s.levels;
  const secondsPerPx = (view.t1 - view.t0) / w;
  g.fillStyle = "#e7ebf0";
  g.fillRect(0, Math.floor(mid), w, Math.max(1, Math.round(ratio)));
  for (let x = 0; x < w; x++) {
    const from = Math.floor((view.t0 + x * secondsPerPx) * pps);
    const to = Math.max(from + 1, Math.floor((view.t0 + (x + 1) * secondsPerPx) * pps));
    if (to <= 0 || from >= levels.length) continue;
    let peak = -2; // -2: nothing here, -1: filled silence, null: unknown
    let unknown = false;
    for (let i = Math.max(0, from); i < Math.min(levels.length, to); i++) {
      const v = levels[i];
      if (v === null) unknown = true;
      else if (v > peak) peak = v;
    }
    if (peak >= 0) {
      const half = Math.max(ratio, (peak / scale) * (mid - 1));
      g.fillStyle = colors.audio;
      g.fillRect(x, mid - half, 1, 2 * half);
    } else if (unknown) {
      g.fillStyle = colors.unknown;
      g.fillRect(x, mid - h / 6, 1, h / 3);
    } else if (peak === -1) {
      g.fillStyle = colors.filled;
      g.fillRect(x, mid - h / 10, 1, h / 5);
    }
  }
}

function renderIntegrity() {
  const d = view.doc;
  const c = d.completeness || {};
  const parts = [];
  const ok = c.complete;
  const live = d.status === "live"; // provisional while the call runs: not a failure yet
  parts.push(el("p", { class: ok || live ? null : "bad" },
                `${live ? "While the call runs: " : ""}${c.statement || "No completeness statement yet."}`));
  const dl = el("dl", { class: "facts" },
    el("dt", { text: "Coverage" }), el("dd", { class: c.coverage < 1 && !ok && !live ? "bad" : null,
      text: `${pct(c.coverage)} of the connected call streamed (${((c.streamedMs || 0) / 1000).toFixed(1)} of ` +
            `${((c.connectedMs || 0) / 1000).toFixed(1)} s)` }),
    el("dt", { text: "Sessions" }), el("dd", { text: `${c.sessions ?? 0}` +
      (c.unsettledSessions?.length ? `, ${c.unsettledSessions.length} not settled` : "") +
      (c.incompleteSessions?.length ? `, ${c.incompleteSessions.length} incomplete` : "") +
      (c.quarantinedChunks ? `, ${c.quarantinedChunks} chunk(s) quarantined` : "") }),
    el("dt", { text: "Digest" }), el("dd", { class: "mono",
      text: d.digest ? `sha256 ${d.digest.value} (${d.digest.chunks} chunks, ${d.digest.files} files)` :
                       "computed when the recording is finalized" }),
    el("dt", { text: "Verify" }), el("dd", {}, el("code", { text: `acsrec recordings verify ${d.callConnectionId}` })),
  );
  for (const s of c.streams || []) {
    dl.append(el("dt", { text: participantName(s.participantRawId) }),
              el("dd", { text: `${(s.audioMs / 1000).toFixed(1)} s received, ${(s.silenceMs / 1000).toFixed(1)} s ` +
                               `filled with silence, ${(s.durationMs / 1000).toFixed(1)} s long` }));
  }
  parts.push(dl);
  if ((c.holes || []).length) {
    const o = origin();
    parts.push(el("table", { class: "holes-table" },
      el("caption", { class: "sr", text: "Holes: spans of the connected call with no streaming session" }),
      el("thead", {}, el("tr", {}, ...["From", "Length", "Cause", "Code", "Healed"].map((t) => el("th", { scope: "col", text: t })))),
      el("tbody", {}, ...c.holes.map((h) => el("tr", { class: h.expected ? null : "bad" },
        el("td", { class: "num", text: clock(parseTime(h.startTime) - o) }),
        el("td", { class: "num", text: `${(h.durationMs / 1000).toFixed(1)} s` }),
        el("td", { text: h.cause.replaceAll("_", " ") + (h.expected ? " (expected)" : "") }),
        el("td", { text: [h.code, h.subCode].filter((x) => x !== null && x !== undefined).join("/") || "–" }),
        el("td", { text: h.healed ? `yes${h.healedBy ? `, by ${h.healedBy}` : ""}` : "no" }))))));
  }
  $("integrity").replaceChildren(...parts);
}

function renderFiles() {
  const d = view.doc;
  const items = [];
  if (d.status === "ready") {
    for (const f of d.files) {
      const what = f.kind === "multichannel" ? `Multichannel file (${f.channels} channels: ` +
        `${(d.channelMap || []).map((c) => `${c.channel + 1} = ${participantName(c.participantRawId)}`).join(", ")})`
        : `${participantName(f.participantRawId)}`;
      const part = f.parts > 1 ? ` part ${f.part} of ${f.parts}` : "";
      items.push(el("li", { "data-kind": f.kind },
        el("strong", { text: what + part }), " ",
        el("span", { class: "muted", text: `${(f.durationMs / 1000).toFixed(1)} s, ${(f.bytes / 1e6).toFixed(2)} MB, ` +
                                           `sha256 ${f.sha256.slice(0, 16)}…` }), " ",
        el("a", { href: f.url, download: "", text: "Download" }),
        f.kind === "multichannel" || d.files.every((x) => x.kind !== "multichannel")
          ? el("audio", { controls: true, preload: "metadata", src: f.url, "aria-label": `Play ${what}` }) : null));
    }
  }
  for (const s of d.status === "ready" ? [] : d.manifest?.streams || []) {
    const name = participantName(s.participantRawId);
    items.push(el("li", {}, el("button", { type: "button", onclick: () => downloadStitched(s, name),
                                            text: `Download ${name} as stitched so far (WAV)` })));
  }
  const list = el("ul", { class: "files" }, ...items);
  const playing = [...$("files").querySelectorAll("audio")].some((a) => !a.paused);
  if (d.status === "ready" && $("files").dataset.status === "ready" && playing) return; // new links after it stops
  $("files").dataset.status = d.status;
  $("files").replaceChildren(d.status === "ready" ? "" : el("p", { class: "muted",
    text: "The finished files are written once the call has ended and every session has settled." }), list);
}

async function downloadStitched(s, name) {
  try {
    const resp = await api(`/recordings/${encodeURIComponent(view.id)}/audio?participant=${encodeURIComponent(s.participantRawId || "mixed")}`, { raw: true });
    if (!resp.ok) throw new Error(`HTTP ${resp.status}`);
    const url = URL.createObjectURL(await resp.blob());
    const a = el("a", { href: url, download: `${view.id}-${s.stream}.wav` });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 60000);
  } catch (err) {
    if (err instanceof AuthError) return onAuthError(err);
    $("call-error").textContent = `Could not download ${name}: ${err.message}`;
  }
}

// -------------------------------------------------------------------------------------------------- playback
// Web Audio: each enabled lane's stitched WAV is fetched a window at a time with HTTP Range (so a long call is
// never held in memory and the key stays in a header), turned into an AudioBuffer and scheduled on one
// AudioContext at its place on the call clock: every lane plays in step, mixed by the browser.
class Player {
  constructor() { this.ctx = null; this.playing = false; this.pos = 0; this.gen = 0; this.sources = [];
                  this.disabled = new Set(); this.follow = false; }

  position() {
    return this.playing ? this.startPos + (this.ctx.currentTime - this.startAt) : this.pos;
  }

  setEnabled(stream, on) {
    if (on) this.disabled.delete(stream); else this.disabled.add(stream);
    if (this.playing) this.play(this.position(), this.follow);
  }

  solo(stream) {
    this.disabled = new Set((view.doc.manifest?.streams || []).map((s) => s.stream).filter((x) => x !== stream));
    for (const lane of $("lanes").children) lane.querySelector("input").checked = !this.disabled.has(lane.dataset.stream);
    if (this.playing) this.play(this.position(), this.follow);
  }

  end() { return Math.max(0, ...(view.peaks?.streams || []).map((s) => s.levels.length / view.peaks.pointsPerSecond)); }

  async play(from, follow = false) {
    this.stopSources();
    if (!this.ctx) this.ctx = new AudioContext();
    await this.ctx.resume();
    const gen = ++this.gen;
    this.follow = follow;
    this.pos = Math.max(0, from);
    this.startPos = this.pos;
    this.startAt = this.ctx.currentTime + 0.2;
    this.next = this.pos;
    this.playing = true;
    $("play").textContent = "Pause";
    $("play").setAttribute("aria-pressed", "true");
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(gen), 200);
    this.tick(gen);
  }

  stop() {
    if (this.playing) this.pos = this.position();
    this.playing = false;
    this.gen++;
    clearInterval(this.timer);
    this.stopSources();
    $("play").textContent = "Play";
    $("play").setAttribute("aria-pressed", "false");
    $("player-note").textContent = "";
  }

  stopSources() { for (const s of this.sources) { try { s.stop(); } catch (_) { /* not started */ } } this.sources = []; }

  async tick(gen) {
    if (gen !== this.gen) return;
    const now = this.position();
    movePlayhead();
    const end = this.end();
    if (!view.live && now >= end) { this.stop(); this.pos = end; movePlayhead(); return; }
    if (this.busy || this.next >= now + AHEAD_S) return;
    if (this.next >= end - 0.05) { // peaks round the end up to a point: nothing to fetch in that last sliver
      $("player-note").textContent = view.live ? "waiting for the next chunk to land…" : "";
      return;
    }
    this.busy = true;
    try {
      const from = this.next;
      const to = Math.min(from + WINDOW_S, end);
      const streams = (view.doc.manifest?.streams || []).filter((s) => !this.disabled.has(s.stream));
      const buffers = await Promise.all(streams.map((s) => this.fetchWindow(s, from, to)));
      if (gen !== this.gen) return;
      let got = 0;
      for (const buf of buffers) {
        if (!buf) continue;
        const src = this.ctx.createBufferSource();
        src.buffer = buf;
        src.connect(this.ctx.destination);
        const when = this.startAt + (from - this.startPos);
        const late = this.ctx.currentTime - when;
        if (late > 0) { if (late < buf.duration) src.start(this.ctx.currentTime, late); }
        else src.start(when);
        this.sources.push(src);
        src.onended = () => { this.sources = this.sources.filter((x) => x !== src); };
        got = Math.max(got, buf.duration);
      }
      this.next = from + (got > 0 ? got : to - from);
      $("player-note").textContent = "";
    } catch (err) {
      if (err instanceof AuthError) { this.stop(); onAuthError(err); return; }
      $("player-note").textContent = `playback: ${err.message}`;
    } finally {
      this.busy = false;
    }
  }

  async fetchWindow(stream, from, to) {
    const rate = view.doc.manifest.sampleRate;
    const first = 44 + Math.round(from * rate) * 2;
    const last = 44 + Math.round(to * rate) * 2 - 1;
    if (last < first) return null;
    const participant = encodeURIComponent(stream.participantRawId || "mixed");
    const resp = await api(`/recordings/${encodeURIComponent(view.id)}/audio?participant=${participant}`,
                           { raw: true, headers: { Range: `bytes=${first}-${last}` } });
    if (resp.status === 416) return null;
    if (resp.status !== 206) throw new Error(`HTTP ${resp.status} for a window of audio`);
    const bytes = await resp.arrayBuffer();
    const samples = new Int16Array(bytes, 0, Math.floor(bytes.byteLength / 2));
    if (!samples.length) return null;
    const buf = this.ctx.createBuffer(1, samples.length, rate);
    const out = buf.getChannelData(0);
    for (let i = 0; i < samples.length; i++) out[i] = samples[i] / 32768;
    return buf;
  }
}
const player = new Player();

function seek(t) {
  t = Math.max(0, Math.min(t, Math.max(view.t1, 0)));
  if (player.playing) player.play(t, false);
  else { player.pos = t; movePlayhead(); }
}

function movePlayhead() {
  if (!view.doc) return;
  const t = player.position();
  $("playhead").style.left = `calc(var(--label) + (100% - var(--label)) * ${Math.min(1, Math.max(0, frac(t)))})`;
  $("position").textContent = `${clock(t)} / ${clock(player.end())}`;
  const scrub = $("scrub");
  scrub.setAttribute("aria-valuenow", t.toFixed(1));
  scrub.setAttribute("aria-valuetext", `${clock(t)} of ${clock(player.end())}`);
}

$("play").addEventListener("click", () => {
  if (player.playing) player.stop();
  else player.play(player.pos >= player.end() - 0.05 ? 0 : player.pos);
});
$("live").addEventListener("click", () => {
  player.play(Math.max(0, player.end() - 2), true);
  announce("Playing the newest audio that has landed.");
});
$("scrub").addEventListener("click", (ev) => {
  const box = ev.currentTarget.getBoundingClientRect();
  seek(view.t0 + ((ev.clientX - box.left) / box.width) * (view.t1 - view.t0));
});
$("scrub").addEventListener("keydown", (ev) => {
  const t = player.position();
  const steps = { ArrowLeft: -1, ArrowRight: 1, PageDown: -10, PageUp: 10 };
  if (ev.key in steps) seek(t + steps[ev.key]);
  else if (ev.key === "Home") seek(0);
  else if (ev.key === "End") seek(player.end());
  else if (ev.key === " " || ev.key === "Enter") $("play").click();
  else return;
  ev.preventDefault();
});
window.addEventListener("resize", () => { if (view.peaks && !$("call").hidden) renderTimeline(false); });

route();
