/**
 * `--inspect URL`: streams the actor system's inspection events to the Stately inspector over a
 * WebSocket (`@statelyai/inspect`). Loopback only unless `--inspect-remote` is given. Audit data is
 * sensitive: anything that looks like record data is redacted from events and contexts (the
 * machines carry none by design; this is the second line of defence).
 */
import type { InspectionEvent } from 'xstate';
import { UsageError } from '../errors.js';
import { isLoopback } from './server.js';

const SENSITIVE = /^(payload|record|records|line|data|chunk|text)$/i;

export function redact<T>(value: T, depth = 0): T {
  if (depth > 6 || value === null || typeof value !== 'object') return value;
  if (Buffer.isBuffer(value)) return `[${value.length} bytes redacted]` as T;
  if (Array.isArray(value)) return value.map((v) => redact(v, depth + 1)) as T;
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
    out[k] = SENSITIVE.test(k) ? '[redacted]' : redact(v, depth + 1);
  }
  return out as T;
}

export function checkInspectUrl(url: string, allowRemote: boolean): URL {
  let u: URL;
  try {
    u = new URL(url);
  } catch {
    throw new UsageError(`--inspect: '${url}' is not a URL (e.g. ws://127.0.0.1:8080)`);
  }
  if (u.protocol !== 'ws:' && u.protocol !== 'wss:') {
    throw new UsageError(`--inspect: '${url}' must be a ws:// or wss:// URL`);
  }
  const host = u.hostname.replace(/^\[|\]$/g, '');
  if (!allowRemote && !isLoopback(host)) {
    throw new UsageError(
      `--inspect: ${host} is not a loopback address; audit state would leave this host. Add --inspect-remote to allow it`,
    );
  }
  return u;
}

export async function createInspector(
  url: URL,
): Promise<{ inspect: (ev: InspectionEvent) => void; stop: () => void }> {
  const { createWebSocketInspector } = await import('@statelyai/inspect');
  const inspector = createWebSocketInspector({
    url: url.toString(),
    sanitizeEvent: (e) => redact(e),
    sanitizeContext: (c) => redact(c),
  });
  // The inspector's `inspect` is an observer ({ next }), not a function.
  const observer = inspector.inspect as unknown as { next?: (ev: InspectionEvent) => void };
  return { inspect: (ev) => observer.next?.(ev), stop: () => inspector.stop() };
}
