/**
 * Typed access to auditrelay's GSS-API binding (native/gssapi.cc, built into
 * native/build/Release/auditrelay_gssapi.node by scripts/build-native.mjs).
 *
 * The addon is loaded lazily, on the first call: an installation without krb5 support works normally until the
 * krb5 transport is actually used, and then fails with a Krb5UnavailableError that says what to install.
 *
 * Everything that may contact the KDC is asynchronous (acquireCredentials, initSecContext: they run on the libuv
 * thread pool); acceptSecContext, wrap and unwrap are CPU-only and synchronous. GSS failures are thrown as GssError
 * with the routine (major) and mechanism (minor) texts of gss_display_status.
 */
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** File name of the addon under native/build/Release. */
export const ADDON_FILE = 'auditrelay_gssapi.node';
/** Environment variable that overrides the addon's location (distribution packages). */
export const ADDON_PATH_ENV = 'AUDITRELAY_GSSAPI_ADDON';

/** The krb5 transport cannot be used because the native binding is missing or does not load. */
export class Krb5UnavailableError extends Error {
  readonly code = 'ERR_KRB5_UNAVAILABLE';
  constructor(
    message: string,
    readonly addonPath: string,
    options?: ErrorOptions,
  ) {
    super(message, options);
    this.name = 'Krb5UnavailableError';
  }
}

/** A GSS-API call failed. The message has both texts; the fields are there for logs and tests. */
export class GssError extends Error {
  readonly code = 'ERR_GSSAPI';
  /** The GSS function that failed, e.g. 'gss_accept_sec_context'. */
  readonly operation: string;
  /** GSS major status (routine error, calling error and supplementary bits). */
  readonly major: number;
  /** Mechanism (krb5) minor status, 0 when none. */
  readonly minor: number;
  readonly majorText: string;
  readonly minorText: string;
  /** Error token the mechanism produced for the peer (acceptor side), if any. */
  readonly token: Buffer | undefined;
  constructor(fields: NativeGssErrorFields, options?: ErrorOptions) {
    super(fields.message, options);
    this.name = 'GssError';
    this.operation = fields.operation;
    this.major = fields.major;
    this.minor = fields.minor;
    this.majorText = fields.majorText;
    this.minorText = fields.minorText;
    this.token = fields.token;
  }
}

interface NativeGssErrorFields {
  message: string;
  operation: string;
  major: number;
  minor: number;
  majorText: string;
  minorText: string;
  token?: Buffer;
}

export type CredentialUsage = 'initiate' | 'accept';

/**
 * How `principal` is parsed: 'user' = a Kerberos principal ('auditd/host.example.org@REALM', realm optional);
 * 'hostbased' = a GSS host-based service ('auditd@host.example.org', or just 'auditd' for the local host), which
 * the library maps to 'auditd/<host>@<realm of host>' (with the canonicalisation rules of krb5.conf).
 */
export type NameType = 'hostbased' | 'user';

export interface AcquireCredentialsOptions {
  usage: CredentialUsage;
  /** Desired name. Initiator default: the first principal in the client keytab (or the ccache's). Acceptor
   * default: any key in the keytab. */
  principal?: string;
  /** Default 'user'. */
  nameType?: NameType;
  /** Initiator: client keytab to get a TGT from. Acceptor: the service keytab. Default: library defaults. */
  keytab?: string;
  /** Initiator only: ccache to use. Default with a keytab: a private MEMORY ccache, destroyed with the
   * credential. Default without a keytab: the library default (KRB5CCNAME). */
  ccache?: string;
  /** Acceptor only: replay cache, e.g. 'file2:/var/lib/auditrelay/krb5.rcache' or 'none'. Default: the
   * library's (KRB5RCACHENAME, else file2 in KRB5RCACHEDIR or /var/tmp). */
  rcache?: string;
}

export interface ContextFlags {
  delegation: boolean;
  mutual: boolean;
  replay: boolean;
  sequence: boolean;
  confidentiality: boolean;
  integrity: boolean;
  anonymous: boolean;
  transferable: boolean;
}

export interface UnwrapResult {
  data: Buffer;
  /** Whether the token was encrypted (conf_state). */
  confidential: boolean;
}

// ---- the native module's shape ----

interface NativeCredential {
  readonly usage: CredentialUsage;
  readonly disposed: boolean;
  dispose(): void;
}

interface NativeSecContext {
  readonly complete: boolean;
  readonly initiator: boolean;
  readonly disposed: boolean;
  wrap(data: Uint8Array): Buffer;
  unwrap(token: Uint8Array): UnwrapResult;
  wrapSizeLimit(maxTokenSize: number): number;
  peerName(): string;
  localName(): string;
  lifetime(): number;
  flags(): ContextFlags;
  dispose(): void;
}

interface NativeStep {
  token: Buffer;
  complete: boolean;
  context: NativeSecContext;
}

export interface NativeGssapi {
  acquireCredentials(
    options: AcquireCredentialsOptions,
  ): Promise<{ credential: NativeCredential; lifetime: number; name: string | null }>;
  initSecContext(
    credential: NativeCredential | null,
    target: string,
    input: Uint8Array | null,
    context?: NativeSecContext,
  ): Promise<NativeStep>;
  acceptSecContext(
    credential: NativeCredential,
    input: Uint8Array,
    context?: NativeSecContext,
  ): NativeStep & { sourceName: string | null };
}

// ---- loading ----

let cached: NativeGssapi | undefined;

/**
 * The package root: the nearest ancestor of this module with a package.json and a native/ directory (works from
 * src/krb5 and from dist/src/krb5, even if dist/ gets a package.json of its own), else the nearest package.json.
 */
function packageRoot(): string {
  const start = path.dirname(fileURLToPath(import.meta.url));
  let firstWithPackageJson: string | undefined;
  for (let dir = start; ; dir = path.dirname(dir)) {
    if (existsSync(path.join(dir, 'package.json'))) {
      if (existsSync(path.join(dir, 'native'))) return dir;
      firstWithPackageJson ??= dir;
    }
    if (path.dirname(dir) === dir) return firstWithPackageJson ?? path.resolve(start, '..', '..');
  }
}

/** Where the addon is expected: $AUDITRELAY_GSSAPI_ADDON, else <package>/native/build/Release/. */
export function addonPath(): string {
  const override = process.env[ADDON_PATH_ENV];
  if (override) return path.resolve(override);
  return path.join(packageRoot(), 'native', 'build', 'Release', ADDON_FILE);
}

const REBUILD_HINT =
  'install the MIT Kerberos development files and a compiler (Debian: sudo apt-get install libkrb5-dev ' +
  'build-essential python3), then rebuild the binding: node scripts/build-native.mjs (in the auditrelay ' +
  'package directory)';

/** Loads the binding (once). Throws Krb5UnavailableError when it is not built or does not load. */
export function loadGssapi(): NativeGssapi {
  if (cached) return cached;
  const file = addonPath();
  if (!existsSync(file)) {
    throw new Krb5UnavailableError(
      `Kerberos (transport = krb5) is not available: the GSS-API binding is not built (${file} is missing); ` +
        REBUILD_HINT,
      file,
    );
  }
  try {
    cached = createRequire(import.meta.url)(file) as NativeGssapi;
  } catch (err) {
    throw new Krb5UnavailableError(
      `Kerberos (transport = krb5) is not available: the GSS-API binding ${file} does not load ` +
        `(${(err as Error).message}); the runtime library comes from the Debian package libgssapi-krb5-2; ` +
        REBUILD_HINT,
      file,
      { cause: err },
    );
  }
  return cached;
}

/** True when the binding loads; never throws. */
export function isGssapiAvailable(): boolean {
  try {
    loadGssapi();
    return true;
  } catch {
    return false;
  }
}

function translate(err: unknown): unknown {
  const e = err as Partial<NativeGssErrorFields> & { code?: unknown };
  if (err instanceof Error && e.code === 'ERR_GSSAPI') {
    return new GssError(
      {
        message: err.message,
        operation: String(e.operation),
        major: Number(e.major),
        minor: Number(e.minor),
        majorText: String(e.majorText ?? ''),
        minorText: String(e.minorText ?? ''),
        ...(e.token ? { token: e.token } : {}),
      },
      { cause: err },
    );
  }
  return err;
}

function guard<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw translate(err);
  }
}

// ---- public API ----

/** A GSS credential (initiator TGT or acceptor keytab). Released on dispose() or garbage collection. */
export class Credential {
  /** Seconds of validity when acquired (Infinity for an acceptor credential). */
  readonly lifetime: number;
  /** Display name ('auditd/host@REALM'), or null when acquired without a name (acceptor: any key). */
  readonly name: string | null;
  /** Date.now() + lifetime at acquisition: re-acquire before this (Infinity when it does not expire). */
  readonly expiresAt: number;
  readonly native: NativeCredential;

  constructor(native: NativeCredential, lifetime: number, name: string | null, acquiredAt = Date.now()) {
    this.native = native;
    this.lifetime = lifetime;
    this.name = name;
    this.expiresAt = acquiredAt + lifetime * 1000;
  }

  get usage(): CredentialUsage {
    return this.native.usage;
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** Releases the credential (and its private MEMORY ccache) now; contexts made from it keep working. */
  dispose(): void {
    this.native.dispose();
  }
}

/** A GSS security context (one connection). Released on dispose() or garbage collection. */
export class SecurityContext {
  readonly native: NativeSecContext;
  constructor(native: NativeSecContext) {
    this.native = native;
  }

  get complete(): boolean {
    return this.native.complete;
  }
  get initiator(): boolean {
    return this.native.initiator;
  }
  get disposed(): boolean {
    return this.native.disposed;
  }
  /** gss_wrap with confidentiality; throws if the mechanism did not encrypt. */
  wrap(data: Uint8Array): Buffer {
    return guard(() => this.native.wrap(data));
  }
  /** gss_unwrap; throws GssError on a bad token, and on a replayed (duplicate or too old) token. */
  unwrap(token: Uint8Array): UnwrapResult {
    return guard(() => this.native.unwrap(token));
  }
  /** Largest input whose wrapped token fits in maxTokenSize bytes (gss_wrap_size_limit, conf_req=1). */
  wrapSizeLimit(maxTokenSize: number): number {
    return guard(() => this.native.wrapSizeLimit(maxTokenSize));
  }
  /** The other side's principal: the acceptor's for an initiator, the client's for an acceptor. */
  peerName(): string {
    return guard(() => this.native.peerName());
  }
  localName(): string {
    return guard(() => this.native.localName());
  }
  /** Seconds until the context expires (the service ticket's end time), 0 when expired. */
  lifetime(): number {
    return guard(() => this.native.lifetime());
  }
  /** Flags the mechanism granted. */
  flags(): ContextFlags {
    return guard(() => this.native.flags());
  }
  dispose(): void {
    this.native.dispose();
  }
}

export interface HandshakeStep {
  /** Token to send to the peer; may be empty (then send nothing). */
  token: Buffer;
  /** The context is established on this side. */
  complete: boolean;
  context: SecurityContext;
}

export interface AcceptStep extends HandshakeStep {
  /** The client principal once complete, else null. */
  sourceName: string | null;
}

/** gss_acquire_cred_from (+ gss_inquire_cred), off the main thread: for an initiator it gets the TGT now. */
export async function acquireCredentials(options: AcquireCredentialsOptions): Promise<Credential> {
  const gss = loadGssapi();
  try {
    const r = await gss.acquireCredentials(options);
    return new Credential(r.credential, r.lifetime, r.name);
  } catch (err) {
    throw translate(err);
  }
}

/**
 * One gss_init_sec_context step (flags MUTUAL|REPLAY|INTEG|CONF, default mechanism, no channel bindings), off
 * the main thread. First step: `input` null and no `context` (this is where the service ticket is fetched from the
 * KDC). Following steps: the peer's token and the context from the previous step.
 *
 * @param target host-based service name, 'auditd@collector.example.org'
 */
export async function initSecContext(
  credential: Credential | null,
  target: string,
  input: Uint8Array | null,
  context?: SecurityContext,
): Promise<HandshakeStep> {
  const gss = loadGssapi();
  try {
    const r = await gss.initSecContext(credential?.native ?? null, target, input, context?.native);
    return { token: r.token, complete: r.complete, context: context ?? new SecurityContext(r.context) };
  } catch (err) {
    throw translate(err);
  }
}

/**
 * One gss_accept_sec_context step (synchronous: never contacts the KDC). The credential is required (an
 * acceptor credential from acquireCredentials({ usage: 'accept' }), restricted to the krb5 mechanism). Do not
 * pass auditd's empty first token: skip zero-length tokens as auditd does.
 */
export function acceptSecContext(
  credential: Credential,
  input: Uint8Array,
  context?: SecurityContext,
): AcceptStep {
  const gss = loadGssapi();
  const r = guard(() => gss.acceptSecContext(credential.native, input, context?.native));
  return {
    token: r.token,
    complete: r.complete,
    context: context ?? new SecurityContext(r.context),
    sourceName: r.sourceName,
  };
}
