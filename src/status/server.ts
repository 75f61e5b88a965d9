/**
 * The local status listener (`status_listen`, off by default): a page with the live statecharts,
 * `/status` as JSON, `/metrics` for Prometheus and `/events` (server-sent events) for the page.
 * The SVGs were drawn at build time (`npm run diagrams`): the plugin runs `--jitless`, where
 * WebAssembly does not exist, so nothing is rendered at run time; the page only highlights.
 */
import { existsSync, readFileSync } from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { Registry } from 'prom-client';
import type { Logger } from '../log.js';
import { DIAGRAMS_DIR } from '../paths.js';
import type { StateObserver } from './observer.js';
import { renderPage } from './page.js';

const MACHINES = ['connection', 'reader', 'queue'] as const;
const STATUS_PUSH_MS = 1000;

export interface StatusServerOptions {
  host: string;
  port: number;
  role: 'agent' | 'collector';
  status: () => Record<string, unknown>;
  registry: Registry;
  observer?: StateObserver;
  log: Logger;
}

export class StatusServer {
  readonly #o: StatusServerOptions;
  readonly #server: http.Server;
  readonly #clients = new Set<http.ServerResponse>();
  readonly #page: string;
  #timer: NodeJS.Timeout | null = null;

  constructor(options: StatusServerOptions) {
    this.#o = options;
    const svgs = options.observer ? loadDiagrams() : {};
    this.#page = renderPage(options.role, svgs);
    this.#server = http.createServer((req, res) => void this.#handle(req, res));
    options.observer?.on('transition', (t) => this.#broadcast('transition', t));
  }

  async start(): Promise<{ host: string; port: number }> {
    await new Promise<void>((resolve, reject) => {
      this.#server.once('error', reject);
      this.#server.listen({ host: this.#o.host, port: this.#o.port }, () => {
        this.#server.off('error', reject);
        resolve();
      });
    });
    this.#timer = setInterval(() => this.#broadcast('status', this.#o.status()), STATUS_PUSH_MS);
    this.#timer.unref();
    const addr = this.#server.address() as AddressInfo;
    this.#o.log.info({ url: `http://${fmtHost(addr.address)}:${addr.port}/` }, 'status page listening');
    return { host: addr.address, port: addr.port };
  }

  async stop(): Promise<void> {
    if (this.#timer) clearInterval(this.#timer);
    for (const c of this.#clients) c.end();
    this.#clients.clear();
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #handle(req: http.IncomingMessage, res: http.ServerResponse): Promise<void> {
    const url = new URL(req.url ?? '/', 'http://status');
    if (req.method !== 'GET') {
      res.writeHead(405, { allow: 'GET' }).end('method not allowed\n');
      return;
    }
    switch (url.pathname) {
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
        const body = await this.#o.registry.metrics();
        res.writeHead(200, { 'content-type': this.#o.registry.contentType }).end(body);
        return;
      }
      case '/events':
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'cache-control': 'no-store',
          connection: 'keep-alive',
        });
        res.write(`event: status\ndata: ${JSON.stringify(this.#snapshot())}\n\n`);
        this.#clients.add(res);
        req.on('close', () => this.#clients.delete(res));
        return;
      default:
        res
          .writeHead(404, { 'content-type': 'text/plain' })
          .end('not found: try /, /status, /metrics or /events\n');
    }
  }

  #snapshot(): Record<string, unknown> {
    const obs = this.#o.observer;
    return {
      role: this.#o.role,
      ...this.#o.status(),
      ...(obs
        ? {
            states: Object.fromEntries(obs.states),
            transitions: obs.transitions.slice(-20),
            errors: obs.errors.slice(-10),
          }
        : {}),
    };
  }

  #broadcast(event: string, data: unknown): void {
    if (this.#clients.size === 0) return;
    const msg = `event: ${event}\ndata: ${JSON.stringify(event === 'status' ? this.#snapshot() : data)}\n\n`;
    for (const c of this.#clients) c.write(msg);
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
