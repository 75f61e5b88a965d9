/**
 * The cryptographic choices of audit 4.2's TLS transport (autls-profile.c) as Node 20 can make them, shared by the
 * agent and the collector.
 *
 * - TLS 1.3 only; no session resumption, no 0-RTT (as upstream).
 * - Cipher suites: upstream's default `TLS_AES_128_GCM_SHA256:TLS_CHACHA20_POLY1305_SHA256:TLS_AES_256_GCM_SHA384`.
 *   An external PSK is bound to one hash (RFC 8446 4.2.11: SHA-256 unless agreed otherwise) and Node's PSK callback
 *   always builds a SHA-256 PSK, so only SHA-256 suites can be negotiated with a PSK, and auditd picks the client's
 *   first suite: the SHA-256 suites are always offered first (a client that offers TLS_AES_256_GCM_SHA384 first
 *   fails with alert 40 against auditd 4.2.1, reference §2).
 * - Key exchange: upstream's `compatible` profile offers X25519MLKEM768 then X25519. Node 20's OpenSSL (3.0) has no
 *   ML-KEM, so `compatible` offers X25519 (what auditd 4.2.1 negotiates with any classical client), and the `pqc`
 *   profile, `tls_require_pqc = yes` and ML-KEM groups in `tls_key_exchange` are configuration errors that say so.
 * - `system`: cipher suites and groups as OpenSSL's configuration and Node's defaults give them (the SHA-256 suites
 *   still first).
 */
import tls from 'node:tls';

export type TlsProfile = 'compatible' | 'system';

/** upstream's default suites (AUTLS_DEFAULT_CIPHERS). */
export const DEFAULT_CIPHER_SUITES = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_256_GCM_SHA384',
] as const;

/** The TLS 1.3 suites OpenSSL 3.0 knows. */
export const TLS13_SUITES = [
  'TLS_AES_128_GCM_SHA256',
  'TLS_AES_256_GCM_SHA384',
  'TLS_CHACHA20_POLY1305_SHA256',
  'TLS_AES_128_CCM_SHA256',
  'TLS_AES_128_CCM_8_SHA256',
] as const;

/** The groups `compatible` offers on Node 20 (upstream: X25519MLKEM768:X25519). */
export const COMPATIBLE_GROUPS = ['X25519'] as const;

export const NO_PQC_REASON =
  `Node ${process.versions.node} uses OpenSSL ${process.versions.openssl}, which has no ML-KEM, so no post-quantum hybrid key exchange can be made; ` +
  'use tls_crypto_profile = compatible (X25519, what auditd 4.2.1 negotiates with any client without ML-KEM)';

const isPqcGroup = (g: string) => /mlkem|kyber/i.test(g);

/** Parses tls_cipher_suites: a colon-separated list of TLS 1.3 suites. Returns the list or an error message. */
export function parseCipherSuites(value: string): string[] | string {
  const list = value.split(':').filter((s) => s !== '');
  if (list.length === 0) return 'the list is empty';
  const unknown = list.filter((s) => !(TLS13_SUITES as readonly string[]).includes(s.toUpperCase()));
  if (unknown.length > 0) {
    return `${unknown.map((s) => `"${s}"`).join(', ')} ${unknown.length === 1 ? 'is not a TLS 1.3 cipher suite' : 'are not TLS 1.3 cipher suites'}`;
  }
  const suites = list.map((s) => s.toUpperCase());
  if (!suites.some((s) => s.endsWith('_SHA256'))) {
    return 'no SHA-256 suite is listed: a pre-shared key can only be used with a SHA-256 suite (RFC 8446 4.2.11; auditd negotiates TLS_AES_128_GCM_SHA256)';
  }
  return suites;
}

/** Parses tls_key_exchange: a colon-separated list of groups Node's OpenSSL knows. */
export function parseKeyExchange(value: string): string[] | string {
  const list = value.split(':').filter((s) => s !== '');
  if (list.length === 0) return 'the list is empty';
  const pqc = list.filter(isPqcGroup);
  if (pqc.length > 0) return `${pqc.join(', ')}: ${NO_PQC_REASON}`;
  for (const g of list) {
    try {
      tls.createSecureContext({ ecdhCurve: g });
    } catch {
      return `"${g}" is not a key exchange group this OpenSSL (${process.versions.openssl}) knows (e.g. X25519, P-256, P-384, X448, ffdhe2048)`;
    }
  }
  return list;
}

export interface SuiteChoice {
  profile: TlsProfile;
  cipherSuites: readonly string[] | null;
  keyExchange: readonly string[] | null;
}

/** SHA-256 suites first, each group in its order (module comment). */
export function orderForPsk(suites: readonly string[]): string[] {
  const sha256 = suites.filter((s) => s.endsWith('_SHA256'));
  return [...sha256, ...suites.filter((s) => !s.endsWith('_SHA256'))];
}

/** The TLS 1.3 suites in Node's default cipher list (the `system` profile). */
function systemSuites(): string[] {
  return tls.DEFAULT_CIPHERS.split(':').filter((s) => s.startsWith('TLS_'));
}

/** The `ciphers` and `ecdhCurve` options for a secure context. */
export function contextOptions(c: SuiteChoice): { ciphers: string; ecdhCurve?: string } {
  const suites = c.cipherSuites ?? (c.profile === 'system' ? systemSuites() : DEFAULT_CIPHER_SUITES);
  const groups = c.keyExchange ?? (c.profile === 'system' ? null : COMPATIBLE_GROUPS);
  return {
    ciphers: orderForPsk(suites).join(':'),
    ...(groups ? { ecdhCurve: groups.join(':') } : {}),
  };
}

/** The options every TLS endpoint of auditrelay uses: TLS 1.3 only, no tickets (no resumption, no 0-RTT). */
export const TLS13_ONLY = { minVersion: 'TLSv1.3', maxVersion: 'TLSv1.3' } as const;

/** The numeric TLS alert in an OpenSSL error message ("SSL alert number 51"), or null. */
export function alertNumber(err: unknown): number | null {
  const m = /SSL alert number (\d+)/.exec(err instanceof Error ? err.message : String(err));
  return m ? Number(m[1]) : null;
}

/** Names of the TLS alerts auditrelay explains (RFC 8446 6). */
export const ALERT_NAMES: Record<number, string> = {
  10: 'unexpected_message',
  20: 'bad_record_mac',
  40: 'handshake_failure',
  42: 'bad_certificate',
  43: 'unsupported_certificate',
  44: 'certificate_revoked',
  45: 'certificate_expired',
  46: 'certificate_unknown',
  47: 'illegal_parameter',
  48: 'unknown_ca',
  49: 'access_denied',
  50: 'decode_error',
  51: 'decrypt_error',
  70: 'protocol_version',
  71: 'insufficient_security',
  80: 'internal_error',
  86: 'inappropriate_fallback',
  109: 'missing_extension',
  110: 'unsupported_extension',
  112: 'unrecognized_name',
  115: 'unknown_psk_identity',
  116: 'certificate_required',
  120: 'no_application_protocol',
};

export function alertText(n: number): string {
  return `TLS alert ${n}${ALERT_NAMES[n] ? ` ${ALERT_NAMES[n]}` : ''}`;
}

/** What OpenSSL's certificate verification codes (X509_V_ERR_*, as Node names them) mean, for the log. */
export const CERT_ERRORS: Record<string, string> = {
  CERT_HAS_EXPIRED: 'has expired',
  CERT_NOT_YET_VALID: 'is not valid yet',
  CERT_REVOKED: 'is revoked (listed in the CRL)',
  DEPTH_ZERO_SELF_SIGNED_CERT: 'is self-signed and not in the CA file',
  SELF_SIGNED_CERT_IN_CHAIN:
    'is not signed by a CA in the CA file (its chain ends in a self-signed certificate that is not there)',
  UNABLE_TO_VERIFY_LEAF_SIGNATURE: 'is not signed by a CA in the CA file',
  UNABLE_TO_GET_ISSUER_CERT: 'is not signed by a CA in the CA file',
  UNABLE_TO_GET_ISSUER_CERT_LOCALLY: 'is not signed by a CA in the CA file',
  CERT_SIGNATURE_FAILURE: 'has a signature that does not verify',
  UNABLE_TO_GET_CRL: 'cannot be checked: no CRL of its issuer is loaded',
  CRL_HAS_EXPIRED: 'cannot be checked: the CRL has expired (publish a new one and reload)',
  CRL_NOT_YET_VALID: 'cannot be checked: the CRL is not valid yet',
  CRL_SIGNATURE_FAILURE: 'cannot be checked: the CRL signature does not verify',
  INVALID_PURPOSE: 'may not be used for this purpose (extendedKeyUsage)',
  CERT_CHAIN_TOO_LONG: 'has a chain that is too long',
  ERR_TLS_CERT_ALTNAME_INVALID: 'does not name the expected server',
};

/** `code` of an error (OpenSSL verification codes are in `code` too). */
export function errorCode(err: unknown): string {
  return (err as NodeJS.ErrnoException)?.code ?? '';
}
