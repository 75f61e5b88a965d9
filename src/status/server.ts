/**
 * The local status listener (`status_listen`, off by default): a page with the live statecharts,
 * `/status` as JSON, `/metrics` for Prometheus and `/events` (server-sent events) for the page.
 * The SVGs were drawn at build time (`npm run diagrams`): the plugin runs `--jitless`, where
 * WebAssembly does not exist, so nothing is rendered at run time; the page only highlights.
 *
 * It has no authentication, so (docs/status.md):
 * - the Host header must name this listener: an IP address, `localhost`, this host's name or the name it was
 *   bound to (a page from another site that re-points its own name at 127.0.0.1, "DNS rebinding", sends its own
 *   name and gets 421);
 * - at most MAX_EVENT_CLIENTS `/events` streams at once (503 beyond); a stream whose client does not read
 *   skips updates while its unsent data is over EVENT_HIGH_WATER and is closed after EVENT_MAX_SKIPPED
 *   skipped updates, so a client that never reads holds a bounded amount of memory;
 * - at most MAX_CONNECTIONS connections;
 * - binding beyond loopback is logged as a warning.
 */
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import { type AddressInfo, isIP } from 'node:net';
import os from 'node:os';
import path from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { DIAGRAMS_DIR } from '../paths.js';
import { type Health, healthText } from './health.js';
import type { StateObserver } from './observer.js';
import { renderPage } from './page.js';

const MACHINES = ['connection', 'reader', 'queue'] as const;
const STATUS_PUSH_MS = 1000;
/** Server-sent event streams at once. */
export const MAX_EVENT_CLIENTS = 16;
/** Unsent bytes of one stream above which updates are skipped for it. */
export const EVENT_HIGH_WATER = 64 * 1024;
/** Updates skipped in a row (about a minute of status) before a stream that does not read is closed. */
export const EVENT_MAX_SKIPPED = 60;
/** Connections to the status listener at once. */
export const MAX_CONNECTIONS = 64;

export interface StatusServerOptions {
  host: string;
  port: number;
  role: 'agent' | 'collector';
  status: () => Record<string, unknown>;
  /** What the event stream pushes every second; default `status` (the collector leaves its host list out). */
  eventStatus?: () => Record<string, unknown>;
  registry: Registry;
  /** `/health`: 200 when healthy, 503 when not (src/status/health.ts). Without it, always healthy. */
  health?: () => Health;
  observer?: StateObserver;
  log: Logger;
  /** Limits (tests); defaults above. */
  maxEventClients?: number;
  eventHighWater?: number;
  eventMaxSkipped?: number;
  /** How often `status` is pushed to event streams. Default 1000 ms. */
  pushIntervalMs?: number;
}

export class StatusServer {
  readonly #o: StatusServerOptions;
  readonly #server: http.Server;
  readonly #clients = new Map<http.ServerResponse, { skipped: number }>();
  #allowedHosts = new Set<string>();
  /** Requests refused for their Host header, event streams refused or closed; for tests and /status. */
  readonly refused = { host: 0, events: 0, slowEvents: 0, connections: 0 };
  readonly #page: string;
  #timer: NodeJS.Timeout | null = null;

  constructor(options: StatusServerOptions) {
    this.#o = options;
    const svgs = options.observer ? loadDiagrams() : {};
    this.#page = renderPage(options.role, svgs);
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    this.#server.maxConnections = MAX_CONNECTIONS;
    this.#server.on('drop', () => {
      this.refused.connections++;
    });
    // A flip back folded into the previous entry is not pushed: the next status carries it (a queue flips at
    // every record).
    options.observer?.on('transition', (t, folded) => {
      if (!folded) this.#broadcast('transition', t);
    });
  }

  async start(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#o.host, port: this.#o.port }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    this.#timer = setInterval(
      () => this.#broadcast('status', null),
      this.#o.pushIntervalMs ?? STATUS_PUSH_MS,
    );
    this.#timer.unref();
    const addr = this.#server.address() as AddressInfo;
    this.#allowedHosts = new Set(
      ['localhost', os.hostname(), this.#o.host].map((h) => h.toLowerCase().replace(/\.$/, '')),
    );
    this.#o.log.info({ url: `http://${fmtHost(addr.address)}:${addr.port}/` }, 'status page listening');
    if (!isLoopback(this.#o.host) && !isLoopback(addr.address)) {
      this.#o.log.warn(
        { address: addr.address, port: addr.port },
        `the status listener is bound to ${fmtHost(addr.address)}:${addr.port}, beyond loopback: anyone who can reach it reads /status and /metrics (it has no authentication); bind it to 127.0.0.1 and put a proxy with authentication in front if others need it`,
      );
    }
    return { host: addr.address, port: addr.port };
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    for (const c of this.#clients.keys()) c.end();
    this.#clients.clear();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  /** The Host header names this listener (module comment), or the request is refused. */
  #hostAllowed(header: string | undefined): boolean {
    if (!header) return false;
    const m = /^(\[[0-9a-fA-F:.]+\]|[^:]+)(?::(\d+))?$/.exec(header.trim());
    if (!m) return false;
    const name = m[1]!
      .replace(/^\[(.*)\]$/, '$1')
      .toLowerCase()
      .replace(/\.$/, '');
    return isIP(name) !== 0 || this.#allowedHosts.has(name);
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    if (!this.#hostAllowed(req.headers.host)) {
      this.refused.host++;
      res
        .writeHead(421, { 'content-type': 'text/plain' })
        .end(
          'misdirected request: the Host header must be this listener (an IP address, localhost or this host name)\n',
        );
      return;
    }
    const url = new URL(req.url ?? '/', 'http://status');
    // HEAD: the same status and headers as GET, no body (node:http leaves it out).
    const head = req.method === 'HEAD';
    if (req.method !== 'GET' && !head) {
      res.writeHead(405, { allow: 'GET, HEAD' }).end('method not allowed\n');
      return;
    }
    switch (url.pathname) {
      case '/health': {
        const h = this.#o.health?.() ?? { status: 'healthy', healthy: true, reasons: [] };
        res
          .writeHead(h.healthy ? 200 : 503, {
            'content-type': 'text/plain; charset=utf-8',
            'cache-control': 'no-store',
          })
          .end(healthText(h));
        return;
      }
      case '/':
        res
          .writeHead(200, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' })
          .end(this.#page);
        return;
      case '/status':
        res
          .writeHead(200, { 'content-type': 'application/json', 'cache-control': 'no-store' })
          .end(`${JSON.stringify(this.#snapshot(), null, 2)}\n`);
        return;
      case '/metrics': {
        // prom-client 15 writes NaN as `Nan` (lib/util.js); the text format's spelling is `NaN` (a process metric
        // such as nodejs_eventloop_lag_mean_seconds is NaN before its first sample).
        const body = (await this.#o.registry.metrics()).replace(/ Nan$/gm, ' NaN');
        res.writeHead(200, { 'content-type': this.#o.registry.contentType }).end(body);
        return;
      }
      case '/events': {
        const max = this.#o.maxEventClients ?? MAX_EVENT_CLIENTS;
        if (this.#clients.size >= max) {
          this.refused.events++;
          res
            .writeHead(503, { 'content-type': 'text/plain', 'retry-after': '10' })
            .end(`too many event streams (at most ${max}); try again later\n`);
          return;
        }
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-store',
          connection: 'keep-alive',
        });
        if (head) {
          res.end();
          return;
        }
        res.write(`event: status\ndata: ${JSON.stringify(this.#snapshot(true))}\n\n`);
        this.#clients.set(res, { skipped: 0 });
        req.on('close', () => this.#clients.delete(res));
        return;
      }
      default:
        res
          .writeHead(404, { 'content-type': 'text/plain' })
          .end('not found: try /, /health, /status, /metrics or /events\n');
    }
  }

  #snapshot(forEvents = false): Record<string, unknown> {
    const obs = this.#o.observer;
    const status = forEvents && this.#o.eventStatus ? this.#o.eventStatus : this.#o.status;
    return {
      role: this.#o.role,
      ...status(),
      ...(obs
        ? {
            states: Object.fromEntries(obs.states),
            transitions: obs.foldedTransitions.slice(-20),
            errors: obs.foldedErrors.slice(-10),
          }
        : {}),
    };
  }

  #broadcast(event: string, data: unknown): void {
    if (this.#clients.size === 0) return;
    const msg = `event: ${event}\ndata: ${JSON.stringify(event === 'status' ? this.#snapshot(true) : data)}\n\n`;
    const highWater = this.#o.eventHighWater ?? EVENT_HIGH_WATER;
    const maxSkipped = this.#o.eventMaxSkipped ?? EVENT_MAX_SKIPPED;
    for (const [c, state] of this.#clients) {
      if (c.writableLength <= highWater) {
        state.skipped = 0;
        c.write(msg);
        continue;
      }
      // It does not read: skip this update (the next status carries the whole state again).
      if (++state.skipped < maxSkipped) continue;
      this.refused.slowEvents++;
      this.#clients.delete(c);
      this.#o.log.warn(
        { unsentBytes: c.writableLength, skipped: state.skipped },
        `closing a status event stream that has not read ${c.writableLength} bytes for ${state.skipped} updates`,
      );
      c.destroy();
    }
  }
}

function loadDiagrams(): Record<string, string> {
  const out: Record<string, string> = {};
  for (const m of MACHINES) {
    const file = path.join(DIAGRAMS_DIR, `${m}.svg`);
    if (existsSync(file))
      out[m] = readFileSync(file, 'utf8').replace(/^<\?xml[^>]*>\s*(<!DOCTYPE[^>]*>\s*)?/, '');
  }
  return out;
}

function fmtHost(h: string): string {
  return h.includes(':') ? `[${h}]` : h;
}

/** True for 127.0.0.0/8, ::1 and localhost. */
export function isLoopback(host: string): boolean {
  return host === 'localhost' || host === '::1' || /^127\.\d+\.\d+\.\d+$/.test(host);
}
