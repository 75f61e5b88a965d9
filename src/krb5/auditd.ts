/**
 * auditd's conventions for its krb5 transport (audit-remote-protocol.md section 4): who the client is, which
 * service it targets, which clients the server lets in, and how large a wrapped message may be.
 */
import os from 'node:os';
import { HEADER_SIZE, MAX_AUDIT_MESSAGE_LENGTH } from '../protocol/constants.js';
import { TOKEN_LENGTH_BYTES } from './framing.js';

/**
 * Largest data token a real auditd (3.0.9 and HEAD) can take: its per-connection buffer holds 8970 bytes, the
 * 4-byte length prefix included. A longer token stalls that connection forever.
 */
export const AUDITD_MAX_DATA_TOKEN = MAX_AUDIT_MESSAGE_LENGTH - TOKEN_LENGTH_BYTES; // 8966

/**
 * Bound on gss_wrap's overhead with confidentiality (krb5 CFX tokens: 16-byte token header + 16-byte confounder +
 * 16-byte encrypted header copy + checksum: 60 bytes with aes*-sha1-96, 72 with aes*-sha2). Kept generous.
 */
export const KRB5_WRAP_OVERHEAD_BOUND = 128;

/** Largest record payload the agent sends over krb5, so that every wrapped message fits auditd's buffer. */
export const KRB5_MAX_RECORD = AUDITD_MAX_DATA_TOKEN - KRB5_WRAP_OVERHEAD_BOUND - HEADER_SIZE; // 8822

export interface AgentPrincipals {
  /**
   * Our own principal without realm, `<krb5_client_name>/<host name>`: the library appends the default realm,
   * as upstream does with krb5_build_principal(default realm, client name, gethostname()).
   */
  client: string;
  /**
   * The server, as a GSS host-based service name `service@host`: `krb5_principal` with its first '/' replaced
   * by '@', else `<krb5_client_name>@<remote_server>`. The library maps it to `service/<host>@<realm of host>`.
   */
  target: string;
}

/** Upstream's principal names for the client (audisp-remote.c negotiate_credentials). */
export function agentPrincipals(opts: {
  krb5Principal: string | null;
  krb5ClientName: string;
  remoteServer: string;
  hostname?: string;
}): AgentPrincipals {
  const hostname = opts.hostname ?? os.hostname();
  const target = (opts.krb5Principal ?? `${opts.krb5ClientName}@${opts.remoteServer}`).replace('/', '@');
  return { client: `${opts.krb5ClientName}/${hostname}`, target };
}

export interface ParsedPrincipal {
  /** Everything before the realm, e.g. 'auditd/host.example.org'. */
  name: string;
  /** First component, e.g. 'auditd'. */
  service: string;
  /** The rest after the first '/', or null for a one-component name. */
  instance: string | null;
  realm: string;
}

/** Splits 'svc/host@REALM' (the realm after the last unescaped '@'). Null when there is no realm. */
export function parsePrincipal(principal: string): ParsedPrincipal | null {
  let at = -1;
  for (let i = 0; i < principal.length; i++) {
    if (principal[i] === '\\') i++;
    else if (principal[i] === '@') at = i;
  }
  if (at <= 0) return null;
  const name = principal.slice(0, at);
  const slash = name.indexOf('/');
  return {
    name,
    service: slash === -1 ? name : name.slice(0, slash),
    instance: slash === -1 ? null : name.slice(slash + 1),
    realm: principal.slice(at + 1),
  };
}

export interface AuthorizationPolicy {
  /** The server's krb5_principal (service name): clients must be `<service>/<any host>@<realm>`. */
  service: string;
  /** The server's realm. */
  realm: string;
  /** When set, the full client principal must also be one of these. */
  allowed?: readonly string[] | null;
}

/**
 * auditd's authorization (auditd-listen.c negotiate_credentials): the client principal must have two parts at
 * least, its first component must equal the server's service name and its realm the server's realm; auditrelay
 * adds an optional allow-list. Returns null when authorised, else the reason.
 */
export function authorizeClient(principal: string, policy: AuthorizationPolicy): string | null {
  const p = parsePrincipal(principal);
  if (p === null || p.instance === null) {
    return `client principal ${principal} is not of the form ${policy.service}/<host>@${policy.realm}`;
  }
  if (p.service !== policy.service) {
    return `client principal ${principal} is not authorised: its service is ${p.service}, not ${policy.service}`;
  }
  if (p.realm !== policy.realm) {
    return `client principal ${principal} is not authorised: its realm is ${p.realm}, not ${policy.realm}`;
  }
  if (policy.allowed && !policy.allowed.includes(principal)) {
    return `client principal ${principal} is not in the allow-list`;
  }
  return null;
}
