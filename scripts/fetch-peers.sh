#!/usr/bin/env bash
# Fetches the real peers that Debian 12 does not ship, from Debian's own mirror, into .cache/peers/ (or $1):
#   - audit >= 4.2.1 (auditd, audisp-remote with the TLS transport) from sid, with sid's libc and loader
#     (sid's binaries need libc >= 2.38; Debian 12 has 2.36). Run them through
#     .cache/peers/audit/run (a wrapper that uses sid's loader); see docs/testing.md.
#   - nats-server >= 2.10 (a static Go binary) from sid — never Debian 12's 2.9.10, which loses
#     acknowledged records after kill -9 (reference: audit-4.2-tls-and-nats.md §3).
# A private apt configuration is used; the system's sources are never edited. Needs apt-get, dpkg-deb.
# Prints the versions it got; exits non-zero (and says why) when a peer cannot be had.
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DEST="${1:-$ROOT/.cache/peers}"
mkdir -p "$DEST"
DEST="$(cd "$DEST" && pwd)"
WORK="$DEST/apt"
mkdir -p "$WORK"/{lists/partial,cache/archives/partial,etc}

MIRROR="$(awk '/^URIs:/ {print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)"
[ -n "$MIRROR" ] || MIRROR="$(awk '/^deb / {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)"
[ -n "$MIRROR" ] || MIRROR=http://deb.debian.org/debian
ARCH="$(dpkg --print-architecture)"

cat >"$WORK/etc/sources.list" <<EOF
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR sid main
EOF
APTO=(-o "Dir::Etc::SourceList=$WORK/etc/sources.list" -o Dir::Etc::SourceParts=/dev/null
  -o "Dir::State::Lists=$WORK/lists" -o "Dir::Cache=$WORK/cache" -o "APT::Architecture=$ARCH"
  -o Debug::NoLocking=1 -o APT::Get::List-Cleanup=0 -o APT::Sandbox::User=root -o Acquire::Languages=none -qq)

have_audit() { [ -x "$DEST/audit/run" ] && "$DEST/audit/run" ausearch -v 2>/dev/null | grep -q 'version 4'; }
have_nats() { [ -x "$DEST/nats-server" ] && "$DEST/nats-server" --version >/dev/null 2>&1; }

if have_audit && have_nats && [ "${FETCH_PEERS_FORCE:-0}" != 1 ]; then
  echo "peers already in $DEST: $(cat "$DEST/audit/VERSION") / $("$DEST/nats-server" --version)"
  exit 0
fi

echo "fetching package lists (sid) from $MIRROR"
apt-get "${APTO[@]}" update

# Candidate version of PKG in suite SUITE (apt's policy output, pin by release).
version_in() { # pkg suite
  apt-cache "${APTO[@]}" madison "$1" | awk -v s="$2" -F' *\\| *' '$3 ~ s"/main" {print $2; exit}'
}
ge() { dpkg --compare-versions "$1" ge "$2"; }

# --- audit >= 4.2.1 from sid -------------------------------------------------------------------------------
AUDIT_VER="$(version_in auditd sid)"
if [ -z "$AUDIT_VER" ] || ! ge "$AUDIT_VER" "1:4.2.1"; then
  echo "fetch-peers: sid has no auditd >= 4.2.1 (found '${AUDIT_VER:-none}'); the TLS interop tests cannot run" >&2
  exit 1
fi
rm -rf "$DEST/audit" "$WORK/debs"
mkdir -p "$DEST/audit/root" "$WORK/debs"
(
  cd "$WORK/debs"
  for p in libc6 libssl3t64 libcap-ng0 libaudit1 libaudit-common libauparse0t64 libauplugin1 auditd audispd-plugins; do
    v="$(version_in "$p" sid)"
    [ -n "$v" ] || { echo "fetch-peers: $p not found in sid" >&2; exit 1; }
    apt-get "${APTO[@]}" download "$p=$v"
  done
)
for deb in "$WORK"/debs/*.deb; do dpkg-deb -x "$deb" "$DEST/audit/root"; done
echo "$AUDIT_VER" >"$DEST/audit/VERSION"
LIBDIR="$(cd "$DEST/audit/root" && dirname "$(ls usr/lib/*/ld-linux*.so.* | head -n1)")"
HOSTLIB="/usr/lib/$(basename "$LIBDIR")"
cat >"$DEST/audit/run" <<EOF
#!/bin/sh
# Runs a program of audit $AUDIT_VER (Debian sid) with sid's own loader and libc; krb5, zlib, zstd come from the host.
# usage: run auditd|audisp-remote|ausearch|... ARGS...
R="$DEST/audit/root"
p="\$1"; shift
for d in usr/sbin sbin usr/bin bin; do [ -x "\$R/\$d/\$p" ] && exec "\$R/$LIBDIR/$(basename "$(ls "$DEST/audit/root/$LIBDIR"/ld-linux*.so.* | head -n1)")" --library-path "\$R/$LIBDIR:$HOSTLIB" "\$R/\$d/\$p" "\$@"; done
echo "run: no program \$p in \$R" >&2; exit 127
EOF
chmod 755 "$DEST/audit/run"

# --- nats-server >= 2.10 from sid ----------------------------------------------------------------------------
NATS_VER="$(version_in nats-server sid)"
if [ -z "$NATS_VER" ] || ! ge "$NATS_VER" "2.10"; then
  echo "fetch-peers: no nats-server >= 2.10 in sid (found '${NATS_VER:-none}'); the JetStream tests cannot run" >&2
  exit 1
fi
rm -rf "$WORK/nats"
mkdir -p "$WORK/nats"
(cd "$WORK/nats" && apt-get "${APTO[@]}" download "nats-server=$NATS_VER")
dpkg-deb -x "$WORK"/nats/nats-server_*.deb "$WORK/nats/x"
install -m 755 "$WORK/nats/x/usr/sbin/nats-server" "$DEST/nats-server" 2>/dev/null ||
  install -m 755 "$WORK/nats/x/usr/bin/nats-server" "$DEST/nats-server"
rm -rf "$WORK/nats" "$WORK/debs" "$WORK/cache/archives"/*.deb

have_audit || { echo "fetch-peers: audit $AUDIT_VER does not run here" >&2; exit 1; }
have_nats || { echo "fetch-peers: nats-server $NATS_VER does not run here" >&2; exit 1; }
echo "audit $AUDIT_VER (sid) in $DEST/audit; $("$DEST/nats-server" --version) ($NATS_VER) in $DEST/nats-server"
