// VidPlan operator dashboard: plain ES module, no dependencies, no build step.
//
// Live: reads the server's event stream (/dashboard/api/events, server-sent events read through fetch so that
// the bearer token travels in the Authorization header, never in a URL). Replay: loads a plan log (the same
// events, one JSON object per line) from the replay server or from a file, and scrubs through it.
// Every text that comes from a robot (session ids, instructions) is set with textContent, never as HTML.

const $ = (id) => document.getElementById(id);
const SVG = 'http://www.w3.org/2000/svg';
const TOKEN_KEY = 'vidplan-dashboard-token';
const FIGURES = [
  ['uncertainty', 'uncertainty', 3],
  ['expected_error', 'expected error', 3],
  ['semantic_reward', 'semantic reward', 3],
  ['value', 'value', 3],
];
const STAGES = [
  ['decode', 'decode images', 'server'], ['queue', 'queue', 'server'],
  ['planner_encode', 'encode'], ['planner_propose', 'propose'], ['planner_rollout', 'roll out'],
  ['planner_score', 'score'], ['planner_refine', 'refine'], ['planner_decode', 'decode heatmaps'],
  ['total', 'total', 'server'],
];

const state = {
  mode: null, auth: false, token: sessionStorage.getItem(TOKEN_KEY),
  model: null, historyS: 300, sessions: [], server: null, now: null,
  selected: null, plan: null, render: null, history: [], view: 'latent',
  connection: null, generation: 0, replay: null,
};

// ------------------------------------------------------------------------------------------------ helpers
function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === 'class') node.className = v; else if (k === 'text') node.textContent = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c);
  return node;
}
function svg(tag, attrs = {}, text) {
  const node = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, String(v));
  if (text !== undefined) node.textContent = text;
  return node;
}
const fmt = (x, digits = 2) => (x === null || x === undefined || Number.isNaN(x) ? '–' : Number(x).toFixed(digits));
const fmtMs = (x) => (x === null || x === undefined ? '–' : x >= 100 ? Math.round(x).toString() : Number(x).toFixed(1));
function fmtAge(s) {
  if (s === null || s === undefined) return '–';
  if (s < 1) return 'now';
  if (s < 90) return `${Math.round(s)} s`;
  return `${Math.round(s / 60)} min`;
}
const confClass = (c) => (c < 0.5 ? 'conf-low' : c < 0.8 ? 'conf-mid' : 'conf-high');
function cameraLabel(name) {
  const m = /^exterior_image_(\d)/.exec(name);
  if (m) return `exterior ${m[1]}`;
  return name.startsWith('wrist') ? 'wrist' : name;
}
function setStatus(text, cls = '') {
  const s = $('status');
  s.textContent = text;
  s.className = `status ${cls}`;
}
function setMode(mode) {
  state.mode = mode;
  $('mode').textContent = mode;
  $('mode').className = `badge ${mode}`;
  $('replay').classList.toggle('hidden', mode !== 'replay');
}

// ------------------------------------------------------------------------------------------------ live
function showLogin(message = '') {
  $('login').classList.remove('hidden');
  $('login-error').textContent = message;
  setStatus('token required', 'bad');
  $('token').focus();
}

async function connect() {
  if (state.connection) state.connection.abort();
  const ctrl = new AbortController();
  state.connection = ctrl;
  const generation = ++state.generation;
  const query = state.selected !== null ? `?watch=${encodeURIComponent(state.selected)}` : '';
  const headers = state.auth && state.token ? { Authorization: `Bearer ${state.token}` } : {};
  setStatus('connecting…');
  try {
    const res = await fetch(`/dashboard/api/events${query}`, { headers, signal: ctrl.signal, cache: 'no-store' });
    if (res.status === 401) {
      sessionStorage.removeItem(TOKEN_KEY);
      state.token = null;
      showLogin(state.auth ? 'The server refused this token.' : '');
      return;
    }
    if (!res.ok || !res.body) throw new Error(`HTTP ${res.status}`);
    $('login').classList.add('hidden');
    setStatus('live', 'ok');
    const reader = res.body.getReader();
    const decoder = new TextDecoder();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf('\n\n')) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split('\n').filter((l) => l.startsWith('data:')).map((l) => l.slice(5).trim()).join('\n');
        if (data) handle(JSON.parse(data));
      }
    }
  } catch (err) {
    if (ctrl.signal.aborted) return;
    console.warn('dashboard stream ended:', err.message);
  }
  if (ctrl.signal.aborted || generation !== state.generation || state.mode !== 'live') return;
  setStatus('disconnected, retrying…', 'bad');
  setTimeout(() => { if (generation === state.generation && state.mode === 'live') connect(); }, 2000);
}

function handle(ev) {
  switch (ev.type) {
    case 'hello':
      state.model = ev.model;
      state.historyS = ev.history_s || 300;
      showModel();
      break;
    case 'snapshot':
      state.sessions = ev.sessions;
      state.server = ev.server;
      state.now = ev.t;
      renderSessions();
      renderServer();
      if (state.selected === null && state.sessions.length) select(state.sessions[0].id);
      else renderTimeline();
      break;
    case 'history':
      if (ev.session === state.selected) { state.history = ev.points; renderTimeline(); }
      break;
    case 'plan':
      if (ev.session === state.selected) {
        state.plan = ev;
        state.history.push([ev.t, ev.confidence, ev.mean_uncertainty, ev.latency_ms]);
        const keep = ev.t - state.historyS;
        while (state.history.length && state.history[0][0] < keep) state.history.shift();
        state.now = Math.max(state.now || 0, ev.t);
        renderPlan();
      }
      break;
    case 'render':
      if (ev.session === state.selected) { state.render = ev; renderImages(); }
      break;
    default:
      break;
  }
}

function select(id) {
  if (id === state.selected) return;
  state.selected = id;
  state.plan = null;
  state.render = null;
  state.history = [];
  $('heatmap').removeAttribute('src');
  $('views').removeAttribute('src');
  renderSessions();
  renderPlan();
  if (state.mode === 'live') connect();
  else if (state.replay) seek(state.replay.cursor);
}

// ------------------------------------------------------------------------------------------------ views
function showModel() {
  const m = state.model;
  if (!m) return;
  $('model').textContent = `${m.model_version} · ${m.device || ''} · H=${m.horizon}, +${m.frame_dt_s} s per frame`;
}

function sparkline(values) {
  const w = 70, h = 20;
  const node = svg('svg', { viewBox: `0 0 ${w} ${h}`, 'aria-hidden': 'true' });
  if (values.length < 2) return node;
  const pts = values.map((v, i) => `${(i / (values.length - 1)) * w},${h - 2 - v * (h - 4)}`).join(' ');
  node.append(svg('polyline', { points: pts, fill: 'none', stroke: '#4aa3ff', 'stroke-width': 1.5 }));
  return node;
}

function renderSessions() {
  const body = $('sessions').tBodies[0];
  body.replaceChildren();
  for (const s of state.sessions) {
    const conf = el('td', {}, el('span', { class: confClass(s.confidence), text: fmt(s.confidence, 2) }),
      sparkline(s.confidence_trend || []));
    const row = el('tr', { class: 'session', 'data-session': s.id, title: `attention ${fmt(s.attention, 2)}` },
      el('td', {}, el('div', { class: 'sid', text: s.id }), el('div', { class: 'instr', text: s.instruction })),
      el('td', { text: fmt(s.plans_per_s, 1) }),
      el('td', { text: fmtAge(s.last_plan_age_s) }),
      el('td', { text: `${fmtMs(s.p50_ms)} / ${fmtMs(s.p95_ms)}` }),
      el('td', { class: s.deadline_hits ? 'hit' : '', text: String(s.deadline_hits) }),
      conf);
    if (s.stale) row.classList.add('stale');
    if (s.id === state.selected) row.classList.add('selected');
    body.append(row);
  }
  $('session-count').textContent = state.sessions.length ? `(${state.sessions.length})` : '';
  $('no-sessions').classList.toggle('hidden', state.sessions.length > 0);
}

function renderServer() {
  const s = state.server;
  if (!s) return;
  $('s-queue').textContent = s.max_queue !== undefined ? `${s.queue_depth}/${s.max_queue}` : '–';
  $('s-rate').textContent = fmt(s.plans_per_s, 1);
  $('s-p50').textContent = fmtMs(s.p50_ms);
  $('s-p99').textContent = fmtMs(s.p99_ms);
  $('s-ok').textContent = s.ok !== undefined ? String(s.ok) : '–';
  const rejects = Object.entries(s.rejects || {}).filter(([, n]) => n > 0);
  $('s-rejects').textContent = rejects.length ? rejects.map(([k, n]) => `${k} ${n}`).join(' · ') : 'none';
  $('s-watchers').textContent = s.watchers !== undefined ? String(s.watchers) : '–';
  $('s-render').textContent = fmtMs(s.render_p50_ms);
}

function renderPlan() {
  const p = state.plan;
  $('detail-empty').classList.toggle('hidden', state.selected !== null);
  $('detail-body').classList.toggle('hidden', state.selected === null);
  $('d-session').textContent = state.selected ?? '';
  if (!p) {
    $('d-instruction').textContent = 'waiting for the next plan…';
    renderTimeline();
    return;
  }
  $('d-instruction').textContent = p.instruction;
  $('d-seq').textContent = String(p.sequence);
  $('d-conf').textContent = fmt(p.confidence, 3);
  $('d-conf').className = confClass(p.confidence);
  $('d-winner').textContent = `#${p.winner} ${p.winner_kind}`;
  $('d-latency').textContent = fmtMs(p.latency_ms);
  $('d-deadline').classList.toggle('hidden', !p.deadline_hit);
  $('d-refined').classList.toggle('hidden', !p.refined);
  $('d-notes').textContent = (p.notes || []).join(' · ');
  renderFrames(p);
  renderProposals(p);
  renderRefinement(p);
  renderTimings(p);
  renderTimeline();
}

function renderFrames(p) {
  const table = $('frames');
  const H = Math.max(p.uncertainty.length, state.model ? state.model.horizon : 0);
  const head = el('tr', {}, el('th', { text: '' }));
  for (let i = 0; i < H; i++) head.append(el('th', { text: `+${fmt((i + 1) * p.frame_dt_s, 1)} s` }));
  const rows = [head];
  for (const [key, label, digits] of FIGURES) {
    const row = el('tr', {}, el('td', { text: label }));
    for (let i = 0; i < H; i++) row.append(el('td', { class: 'cell', text: fmt((p[key] || [])[i], digits) }));
    rows.push(row);
  }
  table.replaceChildren(...rows);
}

function renderImages() {
  const r = state.render;
  if (!r) return;
  if (r.views) $('views').src = r.views;
  const available = { latent: !!r.latent, pixel: !!r.pixel, predicted: !!r.predicted };
  for (const b of document.querySelectorAll('.toggle button')) b.disabled = !available[b.dataset.view];
  let view = state.view;
  if (!available[view]) view = ['latent', 'pixel', 'predicted'].find((v) => available[v]) || view;
  for (const b of document.querySelectorAll('.toggle button')) b.classList.toggle('on', b.dataset.view === view);
  $('legend-bar').className = `bar ${view === 'predicted' ? 'none' : view}`;
  $('legend').classList.toggle('hidden', view === 'predicted');
  if (r[view]) $('heatmap').src = r[view]; else $('heatmap').removeAttribute('src');
  $('heatmap').dataset.view = view;
  $('heatmap').dataset.sequence = String(r.sequence);
  $('heatmap').dataset.session = r.session;
  $('render-info').textContent = `plan ${r.sequence}, rendered in ${fmtMs(r.render_ms)} ms`;
  const labels = $('view-labels');
  labels.replaceChildren(...(r.cameras || []).map((c) => el('span', { text: cameraLabel(c) })));
}

function renderProposals(p) {
  const node = $('proposals');
  node.replaceChildren();
  const W = 380, H = 170, left = 42, bottom = 40, top = 10;
  const scores = p.proposal_scores || [];
  if (!scores.length) return;
  const finite = scores.filter((s) => s !== null);
  let lo = Math.min(0, ...finite), hi = Math.max(0, ...finite, 1e-9);
  const min = Math.min(...finite), max = Math.max(...finite), range = max - min;
  // Scores of one plan often differ by a few per cent: then the axis zooms onto them (its ends are labelled).
  if (finite.length > 1 && range > 0 && range < 0.25 * Math.max(Math.abs(max), Math.abs(min))) {
    lo = min - 0.2 * range;
    hi = max + 0.05 * range;
  }
  const y = (v) => top + (hi - v) / (hi - lo || 1) * (H - top - bottom);
  const slot = (W - left) / scores.length;
  const base = lo > 0 || hi < 0 ? lo : 0;  // bars start at 0, or at the bottom of a zoomed axis
  node.append(svg('line', { x1: left, x2: W, y1: y(base), y2: y(base), stroke: '#3a4550' }));
  const digits = hi - lo < 0.05 ? 4 : 2;
  node.append(svg('text', { x: 2, y: y(hi) + 4 }, fmt(hi, digits)));
  node.append(svg('text', { x: 2, y: y(lo) }, fmt(lo, digits)));
  scores.forEach((s, i) => {
    const kind = (p.proposal_kinds || [])[i] || '';
    const family = kind.split(/[:~]/)[0];
    const colour = i === p.winner ? '#ffb347' : { policy: '#4aa3ff', goal: '#f06595', basis: '#8c7ae6', nominal: '#4cd08a' }[family] || '#9aa5b1';
    const x = left + i * slot + slot * 0.15;
    const v = s === null ? base : s;
    const rect = svg('rect', { x, y: Math.min(y(v), y(base)), width: slot * 0.7, height: Math.max(Math.abs(y(v) - y(base)), 1),
      fill: colour, 'data-kind': kind });
    if (i === p.winner) { rect.setAttribute('stroke', '#ffffff'); rect.setAttribute('stroke-width', '2'); rect.classList.add('winner'); }
    rect.append(svg('title', {}, `#${i} ${kind}: ${fmt(s, 4)}${i === p.winner ? ' (winner)' : ''}`));
    node.append(rect);
    if (scores.length <= 16 || i === p.winner) {
      const tx = x + slot * 0.35, ty = H - bottom + 10;
      node.append(svg('text', { x: tx, y: ty, transform: `rotate(35 ${tx} ${ty})` }, kind));
    }
  });
}

function lineChart(node, series, opts) {
  // series: [{values: [[x, y], ...], colour, label}], opts: {x0, x1, y0, y1, top, height, left, right, label}
  const { x0, x1, top, height, left, right } = opts;
  let { y0, y1 } = opts;
  if (y1 - y0 < 1e-9) { y1 = y0 + 1; }
  const X = (x) => left + (x - x0) / ((x1 - x0) || 1) * (right - left);
  const Y = (v) => top + (y1 - v) / (y1 - y0) * height;
  node.append(svg('rect', { x: left, y: top, width: right - left, height, fill: '#141a20' }));
  node.append(svg('text', { x: 4, y: top + 10 }, opts.label || ''));
  node.append(svg('text', { x: 4, y: top + height }, fmt(y0, opts.digits ?? 2)));
  node.append(svg('text', { x: 4, y: top + 22 }, fmt(y1, opts.digits ?? 2)));
  for (const s of series) {
    const pts = s.values.filter(([, v]) => v !== null && v !== undefined);
    if (!pts.length) continue;
    node.append(svg('polyline', { points: pts.map(([x, v]) => `${X(x)},${Y(v)}`).join(' '), fill: 'none',
      stroke: s.colour, 'stroke-width': 1.5 }));
    if (pts.length < 60) for (const [x, v] of pts) node.append(svg('circle', { cx: X(x), cy: Y(v), r: 2, fill: s.colour }));
  }
}

function renderRefinement(p) {
  const node = $('refinement');
  node.replaceChildren();
  const trace = p.refinement || [];
  if (!trace.length) {
    node.append(svg('text', { x: 10, y: 80 }, 'no refinement on this plan (refine_iters 0, or the deadline cut it)'));
    return;
  }
  const obj = trace.map((s) => [s.iteration, s.objective]);
  const values = obj.map(([, v]) => v).filter((v) => v !== null);
  lineChart(node, [{ values: obj, colour: '#ffb347' }],
    { x0: 0, x1: Math.max(trace.length - 1, 1), y0: Math.min(...values), y1: Math.max(...values), top: 8,
      height: 130, left: 48, right: 392, label: '', digits: 4 });
  const first = trace[0], last = trace[trace.length - 1];
  const change = first.objective ? (100 * (last.objective - first.objective)) / Math.abs(first.objective) : 0;
  node.append(svg('text', { x: 48, y: 156 }, `${trace.length - 1} step(s): ${fmt(first.objective, 4)} → `
    + `${fmt(last.objective, 4)} (${change >= 0 ? '+' : ''}${fmt(change, 1)} %), ${p.refined ? 'refined chunk returned' : 'proposal kept'}`));
  node.append(svg('text', { x: 48, y: 168 }, `value ${fmt(first.value, 3)} → ${fmt(last.value, 3)}, uncertainty `
    + `${fmt(first.uncertainty, 3)} → ${fmt(last.uncertainty, 3)}`));
}

function renderTimings(p) {
  const box = $('timings');
  const t = p.timings_ms || {};
  const total = t.total || Math.max(...Object.values(t), 1);
  const rows = [];
  for (const [key, label, kind] of STAGES) {
    if (t[key] === undefined) continue;
    const fill = el('div', { class: `fill ${kind || ''}` });
    fill.style.width = `${Math.min(100, (100 * t[key]) / total)}%`;
    rows.push(el('div', { class: 'timing', 'data-stage': key }, el('span', { class: 'name', text: label }),
      el('div', { class: 'track' }, fill), el('span', { class: 'ms', text: fmtMs(t[key]) })));
  }
  box.replaceChildren(...rows);
}

function renderTimeline() {
  const node = $('timeline');
  node.replaceChildren();
  const points = state.history;
  const now = state.now ?? (points.length ? points[points.length - 1][0] : 0);
  // The window is the kept history (5 min), or less while the session is younger, so its plans spread out.
  const span = Math.min(state.historyS, Math.max(30, points.length ? now - points[0][0] + 2 : 0));
  const x0 = now - span;
  $('timeline-span').textContent = `last ${span >= 90 ? `${Math.round(span / 60)} min` : `${Math.round(span)} s`}, `
    + `${points.length} plan(s)`;
  const bands = [
    { i: 1, label: 'confidence', colour: '#4cd08a', y0: 0, y1: 1 },
    { i: 2, label: 'uncertainty', colour: '#ff5d5d', y0: 0 },
    { i: 3, label: 'latency ms', colour: '#4aa3ff', y0: 0, digits: 0 },
  ];
  bands.forEach((b, k) => {
    const values = points.map((p) => [p[0], p[b.i]]);
    const finite = values.map(([, v]) => v).filter((v) => v !== null && v !== undefined);
    const y1 = b.y1 ?? Math.max(...finite, b.i === 2 ? 0.5 : 1);
    lineChart(node, [{ values, colour: b.colour }], { x0, x1: now, y0: b.y0, y1, top: 4 + k * 68, height: 58,
      left: 86, right: 796, label: b.label, digits: b.digits ?? 2 });
  });
}

// ------------------------------------------------------------------------------------------------ replay
function parseLog(text) {
  const events = [];
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    try { events.push(JSON.parse(line)); } catch (err) { console.warn('skipped a line that is not JSON'); }
  }
  return events;
}

function lastAtOrBefore(list, t) {
  let lo = 0, hi = list.length - 1, found = -1;
  while (lo <= hi) {
    const mid = (lo + hi) >> 1;
    if (list[mid].t <= t) { found = mid; lo = mid + 1; } else hi = mid - 1;
  }
  return found;
}

function startReplay(text, name) {
  if (state.connection) state.connection.abort();
  state.generation++;
  const events = parseLog(text);
  const hello = events.find((e) => e.type === 'hello');
  if (hello) { state.model = hello.model; state.historyS = hello.history_s || 300; showModel(); }
  const timed = events.filter((e) => typeof e.t === 'number').sort((a, b) => a.t - b.t);
  const plans = timed.filter((e) => e.type === 'plan');
  const r = {
    name, plans, renders: timed.filter((e) => e.type === 'render'),
    snapshots: timed.filter((e) => e.type === 'snapshot'),
    t0: timed.length ? timed[0].t : 0, t1: timed.length ? timed[timed.length - 1].t : 0,
    cursor: 0, timer: null,
  };
  state.replay = r;
  state.selected = null;
  setMode('replay');
  $('login').classList.add('hidden');
  setStatus(`${name}: ${plans.length} plans, ${r.renders.length} renders`, 'ok');
  seek(plans.length ? plans[0].t : r.t0);
}

function derivedSessions(r, t) {
  // Without recorded snapshots: the session list from the plans up to t.
  const by = new Map();
  for (const p of r.plans) {
    if (p.t > t) break;
    const s = by.get(p.session) || { id: p.session, plans: 0, lat: [], conf: [] };
    s.plans += 1; s.last = p; s.lat.push(p.latency_ms); s.conf.push(p.confidence);
    by.set(p.session, s);
  }
  const pct = (xs, q) => { const s = [...xs].sort((a, b) => a - b); return s.length ? s[Math.min(s.length - 1, Math.floor(q * s.length))] : null; };
  return [...by.values()].map((s) => ({
    id: s.id, instruction: s.last.instruction, plans: s.plans, plans_per_s: null, last_plan_age_s: t - s.last.t,
    p50_ms: pct(s.lat, 0.5), p95_ms: pct(s.lat, 0.95), deadline_hits: 0, confidence: s.last.confidence,
    confidence_trend: s.conf.slice(-30), stale: t - s.last.t > 10, attention: 1 - s.last.confidence,
  }));
}

function seek(t) {
  const r = state.replay;
  if (!r) return;
  r.cursor = Math.min(Math.max(t, r.t0), r.t1);
  $('r-slider').value = String(r.t1 > r.t0 ? Math.round(((r.cursor - r.t0) / (r.t1 - r.t0)) * 1000) : 0);
  const snap = lastAtOrBefore(r.snapshots, r.cursor);
  if (snap >= 0) {
    state.sessions = r.snapshots[snap].sessions;
    state.server = r.snapshots[snap].server;
  } else {
    state.sessions = derivedSessions(r, r.cursor);
  }
  if (state.selected === null && state.sessions.length) {
    // The first session in attention order that planned in this log (a snapshot lists idle sessions too).
    const planned = new Set(r.plans.map((p) => p.session));
    state.selected = (state.sessions.find((s) => planned.has(s.id)) || state.sessions[0]).id;
  }
  const mine = r.plans.filter((p) => p.session === state.selected && p.t <= r.cursor);
  state.plan = mine.length ? mine[mine.length - 1] : null;
  const renders = r.renders.filter((e) => e.session === state.selected && e.t <= r.cursor);
  const same = state.plan ? renders.filter((e) => e.sequence === state.plan.sequence) : [];
  state.render = same.length ? same[same.length - 1] : renders.length ? renders[renders.length - 1] : null;
  state.history = mine.filter((p) => p.t > r.cursor - state.historyS)
    .map((p) => [p.t, p.confidence, p.mean_uncertainty, p.latency_ms]);
  state.now = r.cursor;
  const index = state.plan ? r.plans.indexOf(state.plan) + 1 : 0;
  $('r-time').textContent = `${fmt(r.cursor - r.t0, 1)} s of ${fmt(r.t1 - r.t0, 1)} s · plan ${index} of ${r.plans.length}`;
  renderSessions();
  renderServer();
  renderPlan();
  if (state.render) renderImages();
  else { $('heatmap').removeAttribute('src'); $('views').removeAttribute('src'); $('render-info').textContent = 'no images recorded for this plan'; }
}

function stepPlan(direction) {
  const r = state.replay;
  if (!r) return;
  const mine = r.plans.filter((p) => state.selected === null || p.session === state.selected);
  const eps = 1e-6;
  const target = direction > 0 ? mine.find((p) => p.t > r.cursor + eps) : [...mine].reverse().find((p) => p.t < r.cursor - eps);
  if (target) seek(target.t);
}

function togglePlay() {
  const r = state.replay;
  if (!r) return;
  if (r.timer) { clearInterval(r.timer); r.timer = null; $('r-play').textContent = 'play'; return; }
  if (r.cursor >= r.t1) seek(r.t0);
  $('r-play').textContent = 'pause';
  r.timer = setInterval(() => {
    if (r.cursor >= r.t1) { togglePlay(); return; }
    seek(r.cursor + 0.2);
  }, 200);
}

// ------------------------------------------------------------------------------------------------ start
function wire() {
  $('sessions').tBodies[0].addEventListener('click', (e) => {
    const row = e.target.closest('tr.session');
    if (row) select(row.dataset.session);
  });
  for (const b of document.querySelectorAll('.toggle button')) {
    b.addEventListener('click', () => { state.view = b.dataset.view; renderImages(); });
  }
  $('login-form').addEventListener('submit', (e) => {
    e.preventDefault();
    state.token = $('token').value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $('login').classList.add('hidden');
    connect();
  });
  $('log-file').addEventListener('change', async (e) => {
    const file = e.target.files[0];
    if (file) startReplay(await file.text(), file.name);
  });
  $('r-prev').addEventListener('click', () => stepPlan(-1));
  $('r-next').addEventListener('click', () => stepPlan(1));
  $('r-play').addEventListener('click', togglePlay);
  $('r-slider').addEventListener('input', (e) => {
    const r = state.replay;
    if (r) seek(r.t0 + (Number(e.target.value) / 1000) * (r.t1 - r.t0));
  });
}

async function boot() {
  wire();
  const res = await fetch('/dashboard/api/config', { cache: 'no-store' });
  const config = await res.json();
  state.auth = config.auth;
  $('open-log').classList.remove('hidden');
  if (config.mode === 'replay') {
    setMode('replay');
    setStatus('loading the plan log…');
    const log = await fetch('/dashboard/api/replay', { cache: 'no-store' });
    if (!log.ok) { setStatus(`no plan log (HTTP ${log.status})`, 'bad'); return; }
    startReplay(await log.text(), 'replay');
    return;
  }
  setMode('live');
  renderPlan();
  if (state.auth && !state.token) showLogin();
  else connect();
}

boot().catch((err) => setStatus(`could not start: ${err.message}`, 'bad'));
