/**
 * The status page: static HTML with the build-time SVGs inlined; a few lines of script follow
 * `/events` and mark the active states (`.active` on the SVG element `state-<machine>.<path>` and on
 * each of its ancestors' elements).
 */

const STYLE = `
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .5em; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(180px, 1fr)); gap: .5em; margin-bottom: 1em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: .5em .8em; }
.card b { display: block; font-size: 1.4em; }
.machines { display: flex; flex-wrap: wrap; gap: 1em; }
.machine { border: 1px solid #ddd; border-radius: 6px; padding: .5em; }
.machine h2 { font-size: 1em; margin: 0 0 .3em; }
.machine svg { max-width: 100%; height: auto; }
g.node.active > :is(polygon, ellipse, path), g.node.active > g > a > :is(polygon, ellipse, path) { fill: #ffe082 !important; stroke: #e65100 !important; stroke-width: 2.5px; }
g.cluster.active > :is(polygon, path), g.cluster.active > g > a > :is(polygon, path) { fill: #fff8e1 !important; stroke: #e65100 !important; stroke-width: 2.5px; }
table { border-collapse: collapse; font-size: 12px; }
td, th { border-bottom: 1px solid #eee; padding: 2px 8px; text-align: left; }
.err { color: #b71c1c; }
`;

const SCRIPT = `
const $ = (id) => document.getElementById(id);
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
const esc = (t) => String(t).replace(/[&<>"]/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;' })[c]);
function renderHosts(s) {
  const t = $('hosts');
  if (!t || !s.hostList) return;
  t.innerHTML = '<tr><th>host</th><th>kind</th><th>records</th><th>bytes</th><th>connected</th><th>last seen</th><th>silent for</th></tr>' +
    s.hostList.map((h) => '<tr' + (h.silentSeconds !== null ? ' class="err"' : '') + '><td>' + esc(h.host) + '</td><td>' + h.kind +
      '</td><td>' + h.records + '</td><td>' + h.bytes + '</td><td>' + (h.connected ? 'yes (' + h.connections + ')' : 'no') +
      '</td><td>' + h.lastSeen.slice(0, 19).replace('T', ' ') + '</td><td>' + (h.silentSeconds === null ? '' : h.silentSeconds + ' s') + '</td></tr>').join('');
}
function render(s) {
  if (s.hosts) { s.hostCount = s.hosts.hosts; s.silentHosts = s.hosts.silent; }
  if (s.log) { s.logState = s.log.suspended ? 'suspended (' + s.log.suspended + ')' : s.log.diskFull ? 'disk full' : s.log.diskLow ? 'disk low' : 'writing'; }
  for (const k of ['state', 'server', 'queueDepth', 'queueBytes', 'inFlight', 'connects', 'failures', 'recordsAcked', 'clients', 'records', 'hostCount', 'silentHosts', 'logState']) {
    const el = $('v-' + k); if (el && s[k] !== undefined) el.textContent = s[k];
  }
  renderHosts(s);
  document.body.dataset.connection = (s.states && s.states.connection) || '';
  highlight(s.states);
  if (s.transitions) $('transitions').innerHTML = s.transitions.slice().reverse().map((t) =>
    '<tr><td>' + t.time.slice(11, 23) + '</td><td>' + t.actor + '</td><td>' + (t.from || '') + ' → ' + t.to + '</td><td>' + t.event + '</td></tr>').join('');
  if (s.errors) $('errors').innerHTML = s.errors.slice().reverse().map((e) =>
    '<tr class="err"><td>' + e.time.slice(11, 23) + '</td><td>' + e.source + '</td><td>' + e.message.replace(/</g, '&lt;') + '</td></tr>').join('');
}
const es = new EventSource('/events');
if ($('hosts')) { const hosts = () => fetch('/status').then((r) => r.json()).then(render); hosts(); setInterval(hosts, 5000); }
es.addEventListener('status', (m) => render(JSON.parse(m.data)));
es.addEventListener('transition', () => fetch('/status').then((r) => r.json()).then(render));
`;

export function renderPage(role: 'agent' | 'collector', svgs: Record<string, string>): string {
  const cards =
    role === 'agent'
      ? ['state', 'server', 'queueDepth', 'queueBytes', 'inFlight', 'connects', 'failures', 'recordsAcked']
      : ['clients', 'records', 'hostCount', 'silentHosts', 'logState'];
  const names: Record<string, string> = {
    state: 'connection',
    server: 'server',
    queueDepth: 'queued records',
    queueBytes: 'queued bytes',
    inFlight: 'in flight',
    connects: 'connects',
    failures: 'link failures',
    recordsAcked: 'acknowledged',
    clients: 'clients',
    records: 'records written',
    hostCount: 'hosts',
    silentHosts: 'silent hosts',
    logState: 'log',
  };
  const machines = Object.entries(svgs)
    .map(
      ([m, svg]) =>
        `<div class="machine" id="machine-${m}"><h2>${m}: <span id="state-${m}-label"></span></h2>${svg}</div>`,
    )
    .join('\n');
  return `<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>auditrelay ${role}</title><style>${STYLE}</style></head>
<body>
<h1>auditrelay ${role}</h1>
<div class="grid">${cards.map((c) => `<div class="card">${names[c]}<b id="v-${c}">–</b></div>`).join('')}</div>
<div class="machines">${machines}</div>
${role === 'collector' ? '<h2>Hosts (silent first; every host in /metrics)</h2><table id="hosts"></table>' : ''}
<h2>Recent errors</h2><table id="errors"></table>
<h2>Recent transitions</h2><table id="transitions"></table>
<script>${SCRIPT}</script>
</body></html>
`;
}
