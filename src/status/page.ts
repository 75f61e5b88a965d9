/**
 * The status page: static HTML with the build-time SVGs inlined; a few lines of script follow `/events`.
 * Read top down, the way an on-call engineer reads it (docs/status.md, "The page"):
 *
 * 1. the verdict, large and coloured: HEALTHY / DEGRADED / DOWN with the health reasons (src/status/health.ts),
 *    or NO ANSWER when the process has stopped answering (no status for STALE_MS: everything below is then
 *    greyed out and says how old it is);
 * 2. the numbers: server (or listen address), records/s, age of the last ACK, backlog, version, …;
 * 3. the latest errors (repeats folded: ×N), above the fold;
 * 4. the statecharts with their active states highlighted (`.active` on the SVG element
 *    `state-<machine>.<path>` and on each of its ancestors' elements), the transitions (a state flipping back
 *    and forth, as the queue does at every record, is one line: ×N), and for the collector its hosts.
 */

/** No status event for this long: the page says the process does not answer (the server pushes every second). */
export const STALE_MS = 3500;

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 0; color: #222; }
main { padding: 0 1.5em 1.5em; }
#banner { padding: .8em 1.5em; color: #fff; background: #757575; display: flex; flex-wrap: wrap; align-items: baseline; gap: .3em 1.2em; }
#banner.healthy { background: #2e7d32; }
#banner.degraded { background: #ef6c00; }
#banner.down { background: #c62828; }
#banner.stale { background: repeating-linear-gradient(135deg, #424242 0 18px, #616161 18px 36px); }
#verdict { font-size: 2.2em; font-weight: 700; letter-spacing: .04em; }
#who { font-size: 1.1em; opacity: .9; }
#reasons { flex-basis: 100%; margin: 0; padding-left: 1.2em; font-size: 1.05em; }
#reasons:empty { display: none; }
#age { margin-left: auto; font-size: .9em; opacity: .9; }
body.stale main { opacity: .45; filter: grayscale(1); }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: .5em; margin: 1em 0; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .4em .8em; }
.card span { color: #555; font-size: .9em; }
.card b { display: block; font-size: 1.35em; overflow-wrap: anywhere; }
.card.bad b { color: #c62828; }
.card.wide { grid-column: span 2; }
h2 { font-size: 1.05em; margin: 1em 0 .3em; }
.machines { display: flex; flex-wrap: wrap; gap: 1em; }
.machine { border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
.machine h2 { font-size: 1em; margin: 0 0 .3em; }
.machine svg { max-width: 100%; height: auto; }
g.node.active > :is(polygon, ellipse, path), g.node.active > g > a > :is(polygon, ellipse, path) { fill: #ffe082 !important; stroke: #e65100 !important; stroke-width: 2.5px; }
g.cluster.active > :is(polygon, path), g.cluster.active > g > a > :is(polygon, path) { fill: #fff8e1 !important; stroke: #e65100 !important; stroke-width: 2.5px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; vertical-align: top; }
.err { color: #b71c1c; }
.none { color: #777; font-style: italic; }
.n { color: #555; white-space: nowrap; }
`;

const SCRIPT = `
const $ = (id) => document.getElementById(id);
const STALE_MS = ${STALE_MS};
const esc = (t) => String(t).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]);
const clock = (iso) => (iso ? String(iso).slice(11, 19) : '');
function ago(ms) {
  const s = Math.max(0, Math.round(ms / 1000));
  if (s < 90) return s + ' s';
  if (s < 5400) return Math.round(s / 60) + ' min';
  if (s < 172800) return Math.round(s / 3600) + ' h';
  return Math.round(s / 86400) + ' d';
}
function num(n) { return typeof n === 'number' ? n.toLocaleString('en-US') : n; }
function bytes(n) {
  if (typeof n !== 'number') return n;
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let i = 0;
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + ' ' + u[i];
}
let last = null;
let lastAt = 0;
function set(id, text, bad) {
  const el = $('v-' + id);
  if (!el) return;
  el.textContent = text;
  el.parentElement.classList.toggle('bad', !!bad);
}
function highlight(states) {
  document.querySelectorAll('g.active').forEach((g) => g.classList.remove('active'));
  for (const [machine, path] of Object.entries(states || {})) {
    const parts = path.split('.');
    for (let i = 1; i <= parts.length; i++) {
      const el = document.getElementById('state-' + machine + '.' + parts.slice(0, i).join('.'));
      if (el) el.classList.add('active');
    }
    const label = $('state-' + machine + '-label');
    if (label) label.textContent = path;
  }
}
function renderBanner() {
  const banner = $('banner');
  const stale = lastAt > 0 && Date.now() - lastAt > STALE_MS;
  const never = lastAt === 0 && Date.now() - started > STALE_MS;
  document.body.classList.toggle('stale', stale || never);
  if (stale || never) {
    banner.className = 'stale';
    document.body.dataset.health = 'stale';
    $('verdict').textContent = 'NO ANSWER';
    $('reasons').innerHTML = '<li>' + (never ? 'the process has not answered since this page was opened'
      : 'the process has not answered for ' + ago(Date.now() - lastAt) + ' (last status at ' + new Date(lastAt).toTimeString().slice(0, 8) +
        '): it may have stopped; what is shown below is as it was then') + '</li>';
    document.title = 'NO ANSWER · ' + baseTitle;
  } else if (last && last.health) {
    const h = last.health;
    banner.className = h.status;
    document.body.dataset.health = h.status;
    $('verdict').textContent = h.status.toUpperCase();
    $('reasons').innerHTML = h.reasons.map((r) => '<li><b>' + esc(r.code) + '</b>: ' + esc(r.message) + '</li>').join('');
    document.title = h.status.toUpperCase() + ' · ' + baseTitle;
  }
  $('age').textContent = lastAt ? 'updated ' + ago(Date.now() - lastAt) + ' ago' : 'waiting for the first status…';
  if (last && ROLE === 'agent') set('lastAck', last.lastAckAt ? ago(Date.now() - Date.parse(last.lastAckAt)) + ' ago' : 'never', !last.lastAckAt && last.queueDepth > 0);
}
function renderErrors(s) {
  // The collector keeps no error list: its failed log write, while it lasts, is its latest error.
  const errors = s.errors || (s.lastWriteError ? [{ time: s.lastWriteError.time, source: 'log', message: 'write failed: ' + s.lastWriteError.code }] : []);
  const list = errors.slice().reverse();
  $('errors').innerHTML = list.length === 0 ? '<tr><td class="none">none</td></tr>' : list.map((e) =>
    '<tr class="err"><td class="n">' + clock(e.time) + '</td><td>' + esc(e.source) + '</td><td>' + esc(e.message) +
    (e.count ? ' <span class="n">(×' + e.count + ' since ' + clock(e.since) + ')</span>' : '') + '</td></tr>').join('');
}
function renderTransitions(s) {
  if (!s.transitions || !$('transitions')) return;
  $('transitions').innerHTML = s.transitions.slice().reverse().map((t) =>
    '<tr><td class="n">' + clock(t.time) + '</td><td>' + esc(t.actor) + '</td><td>' +
    (t.count ? esc(t.from) + ' ⇄ ' + esc(t.to) + ' <span class="n">(×' + t.count + ' since ' + clock(t.since) + ')</span>'
      : esc(t.from || '') + ' → ' + esc(t.to)) + '</td><td>' + esc(t.event) + '</td></tr>').join('');
}
function renderHosts(s) {
  const t = $('hosts');
  if (!t || !s.hostList) return;
  const loss = (l) => !l ? '' : [l.missing ? l.missing + ' missing' : '', l.kernelLost ? 'kernel lost ' + l.kernelLost : '',
    l.auditdAborts ? l.auditdAborts + ' auditd abort(s)' : '', l.auditdErrors ? l.auditdErrors + ' auditd error(s)' : '',
    l.restarts ? l.restarts + ' restart(s)' : ''].filter((x) => x).join(', ');
  const lossy = (l) => l && (l.missing || l.kernelLost || l.auditdAborts || l.auditdErrors);
  t.innerHTML = '<tr><th>host</th><th>kind</th><th>records</th><th>bytes</th><th>connected</th><th>last seen</th><th>silent for</th><th>loss</th></tr>' +
    s.hostList.map((h) => '<tr' + (h.silentSeconds !== null || lossy(h.loss) ? ' class="err"' : '') + '><td>' + esc(h.host) + '</td><td>' + esc(h.kind) +
      '</td><td>' + h.records + '</td><td>' + h.bytes + '</td><td>' + (h.connected ? 'yes (' + h.connections + ')' : 'no') +
      '</td><td>' + esc(h.lastSeen.slice(0, 19).replace('T', ' ')) + '</td><td>' + (h.silentSeconds === null ? '' : h.silentSeconds + ' s') +
      '</td><td>' + esc(loss(h.loss)) + '</td></tr>').join('');
}
function render(s) {
  last = Object.assign(last || {}, s);
  lastAt = Date.now();
  s = last;
  set('version', s.version || '–');
  set('rate', (s.recordsPerSecond ?? 0).toLocaleString('en-US'));
  if (ROLE === 'agent') {
    set('server', (s.server || '–') + (s.servers > 1 ? ' (' + (s.serverIndex + 1) + ' of ' + s.servers + ')' : ''), s.serverIndex > 0);
    set('state', s.state || '–', s.state && !/^online\\.(connected|draining)$/.test(s.state));
    const fill = s.queueCapacity ? Math.round((100 * s.queueUsed) / s.queueCapacity) : 0;
    set('backlog', num(s.queueDepth) + ' (' + fill + ' %)' + (s.held ? ' +' + num(s.held) + ' held' : ''), fill >= 50 || s.held > 0);
    set('queueBytes', bytes(s.queueBytes));
    set('inFlight', num(s.inFlight));
    set('recordsAcked', s.recordsAcked);
    set('failures', num(s.failures));
  } else {
    set('listen', s.listen || 'not listening', !s.listen);
    set('clients', num(s.clients));
    set('records', s.records);
    if (s.hosts) { set('hostCount', num(s.hosts.hosts)); set('silentHosts', num(s.hosts.silent), s.hosts.silent > 0);
      set('lossHosts', num(s.hosts.hostsWithLoss ?? 0), s.hosts.hostsWithLoss > 0); }
    if (s.log) {
      set('logState', s.log.suspended ? 'suspended (' + s.log.suspended + ')' : s.log.diskFull ? 'disk full' : s.lastWriteError ? 'write error' : s.log.diskLow ? 'disk low' : 'writing',
        !!(s.log.suspended || s.log.diskFull || s.lastWriteError));
      set('free', s.log.freeBytes === null ? '–' : bytes(s.log.freeBytes), s.log.diskLow);
    }
  }
  renderBanner();
  renderErrors(s);
  renderTransitions(s);
  renderHosts(s);
  document.body.dataset.connection = (s.states && s.states.connection) || '';
  highlight(s.states);
}
const started = Date.now();
const baseTitle = document.title;
const es = new EventSource('/events');
es.addEventListener('status', (m) => render(JSON.parse(m.data)));
// A transition shows at once (the next status, within a second, brings the rest).
es.addEventListener('transition', (m) => {
  if (!last) return;
  const t = JSON.parse(m.data);
  last.states = Object.assign({}, last.states, { [t.actor]: t.to });
  document.body.dataset.connection = last.states.connection || '';
  highlight(last.states);
});
setInterval(renderBanner, 1000);
if ($('hosts')) { const hosts = () => fetch('/status').then((r) => r.json()).then(render).catch(() => {}); hosts(); setInterval(hosts, 5000); }
`;

/** id, label, and whether it takes two columns. */
type Card = [id: string, label: string, wide?: boolean];

const AGENT_CARDS: Card[] = [
  ['server', 'server', true],
  ['state', 'connection'],
  ['rate', 'records/s (10 s)'],
  ['lastAck', 'last ACK'],
  ['backlog', 'backlog (records, fill)'],
  ['queueBytes', 'backlog bytes'],
  ['inFlight', 'in flight'],
  ['recordsAcked', 'acknowledged'],
  ['failures', 'link failures'],
  ['version', 'version'],
];

const COLLECTOR_CARDS: Card[] = [
  ['listen', 'listening on', true],
  ['logState', 'log'],
  ['rate', 'records/s (10 s)'],
  ['clients', 'clients'],
  ['records', 'records written'],
  ['free', 'free space'],
  ['hostCount', 'hosts'],
  ['silentHosts', 'silent hosts'],
  ['lossHosts', 'hosts with loss'],
  ['version', 'version'],
];

export function renderPage(role: 'agent' | 'collector', svgs: Record<string, string>): string {
  const cards = role === 'agent' ? AGENT_CARDS : COLLECTOR_CARDS;
  const machines = Object.entries(svgs)
    .map(
      ([m, svg]) =>
        `<div class="machine" id="machine-${m}"><h2>${m}: <span id="state-${m}-label"></span></h2>${svg}</div>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>auditrelay ${role}</title><style>${STYLE}</style></head>
<body data-health="">
<header id="banner"><span id="verdict">…</span><span id="who">auditrelay ${role}</span><span id="age"></span><ul id="reasons"></ul></header>
<main>
<div class="grid">${cards.map(([id, label, wide]) => `<div class="card${wide ? ' wide' : ''}"><span>${label}</span><b id="v-${id}">–</b></div>`).join('')}</div>
<h2>Latest errors</h2><table id="errors"></table>
${machines ? `<h2>State</h2><div class="machines">${machines}</div>` : ''}
${role === 'collector' ? '<h2>Hosts (silent first, then those with loss; every host in /metrics)</h2><table id="hosts"></table>' : ''}
${machines ? '<h2>Recent transitions</h2><table id="transitions"></table>' : ''}
</main>
<script>const ROLE = '${role}';${SCRIPT}</script>
</body></html>
`;
}
