#!/usr/bin/env bash
# Installs what the end-to-end tests need on Debian 12 (bookworm):
# Prosody (with prosody-modules for SASL2), jabberd2, ejabberd, go-sendxmpp,
# Chromium + chromedriver, openssl, Prometheus, systemd-analyze (package systemd),
# Converse.js (npm) under target/, and a Python venv at <repo>/.venv with pinned
# slixmpp and pyarrow. Idempotent; a second run only checks and returns in about a
# second.
#
# The Rust toolchain is expected to be installed already.
set -euo pipefail

SLIXMPP_VERSION=1.17.0
PYARROW_VERSION=26.0.1
# moto's server mode: a real S3 API with versioning and Object Lock (tests/src/s3.rs,
# archive/tests/bucket_witness.rs).
MOTO_VERSION=5.2.5
# A real SMTP server for the journaling tests (tests/src/smtp.rs).
AIOSMTPD_VERSION=1.4.6
AIOHTTP_VERSION=3.14.5
# Converse.js, the web XMPP client the WebSocket test runs in Chromium (its prebuilt
# dist/ from the npm package; tests/src/converse.rs).
CONVERSE_VERSION=12.0.0

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PACKAGES=(prosody prosody-modules jabberd2 ejabberd go-sendxmpp chromium chromium-driver
    fonts-dejavu-core python3-venv openssl prometheus systemd)

log() { printf 'setup: %s\n' "$*" >&2; }

as_root() {
    if [ "$(id -u)" -eq 0 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@" || { log "need root for: $*  (sudo -n failed)"; exit 1; }
    else
        log "need root (or sudo) for: $*"
        exit 1
    fi
}

# --- Debian packages ---------------------------------------------------------
missing=()
for pkg in "${PACKAGES[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$pkg")
    fi
done
if [ "${#missing[@]}" -gt 0 ]; then
    log "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    as_root apt-get update -q
    # Keep the packages' own services (Prosody, jabberd2 and ejabberd on 5222,
    # Prometheus on *:9090, epmd on *:4369) from starting at install time where
    # policy-rc.d is honoured; they are stopped below either way. A policy-rc.d
    # the host had is left alone.
    own_policy=
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' | as_root tee /usr/sbin/policy-rc.d >/dev/null
        as_root chmod 755 /usr/sbin/policy-rc.d
        own_policy=1
    fi
    as_root apt-get install -y -q --no-install-recommends "${missing[@]}"
    if [ -n "$own_policy" ]; then
        as_root rm -f /usr/sbin/policy-rc.d
    fi
fi

# --- The system Prosody service ----------------------------------------------
# The Debian package starts a Prosody on 5222/5269. Tests never use those
# ports, but a stray server owned by the package is noise at best; stop it
# and keep it from starting at boot. No-ops where it is not running.
for svc in prosody prometheus; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$svc" >/dev/null 2>&1 || true
    fi
    if [ -x "/etc/init.d/$svc" ] && command -v service >/dev/null 2>&1; then
        as_root service "$svc" stop >/dev/null 2>&1 || true
    fi
done
# jabberd2 runs as four units (router, sm, c2s, s2s) that jabberd.service ties
# together, and as one init script named jabberd2. The tests start their own
# from generated configs; the init script stops only the jabber user's
# processes named in its pid files. Its component scripts take that user from
# the environment, which `service` clears, so it is run directly.
for unit in jabberd jabberd-c2s jabberd-s2s jabberd-sm jabberd-router; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
done
if [ -x /etc/init.d/jabberd2 ]; then
    as_root env USER=jabber GROUP=jabber /etc/init.d/jabberd2 stop >/dev/null 2>&1 || true
fi
# ejabberd's unit requires epmd, whose socket unit (from erlang-base) listens on
# *:4369. The tests run their own nodes without epmd. The init script is only
# run when the packaged node (user ejabberd) is up: with nothing running, its
# ejabberdctl status check starts an epmd on *:4369 and leaves it there.
for unit in ejabberd epmd.socket epmd; do
    if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
        as_root systemctl disable --now "$unit" >/dev/null 2>&1 || true
    fi
done
if [ -x /etc/init.d/ejabberd ] && pgrep -u ejabberd -x beam.smp >/dev/null 2>&1; then
    as_root /etc/init.d/ejabberd stop >/dev/null 2>&1 || true
fi

# --- Python venv for the slixmpp client and export checks --------------------
want="slixmpp==$SLIXMPP_VERSION pyarrow==$PYARROW_VERSION moto[server]==$MOTO_VERSION aiosmtpd==$AIOSMTPD_VERSION aiohttp==$AIOHTTP_VERSION"
stamp="$VENV/.custos-requirements"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "creating $VENV ($want)"
    /usr/bin/python3 -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --disable-pip-version-check --no-input \
        --only-binary=:all: "slixmpp==$SLIXMPP_VERSION" "pyarrow==$PYARROW_VERSION" \
        "moto[server]==$MOTO_VERSION" "aiosmtpd==$AIOSMTPD_VERSION" "aiohttp==$AIOHTTP_VERSION"
    echo "$want" >"$stamp"
fi
# Keep the venv out of git without touching the repository's .gitignore.
[ -f "$VENV/.gitignore" ] || echo '*' >"$VENV/.gitignore"
"$VENV/bin/python" -c 'import slixmpp, pyarrow, boto3, moto.server, aiosmtpd, aiohttp' \
    || { log "venv at $VENV is broken; remove it and re-run"; exit 1; }

# --- Converse.js from the npm registry (no dependencies: dist/ is prebuilt) --------
converse_dir="$ROOT/target/converse.js-$CONVERSE_VERSION"
if [ ! -f "$converse_dir/dist/converse.min.js" ]; then
    command -v npm >/dev/null 2>&1 || { log "npm is needed for Converse.js"; exit 1; }
    log "fetching converse.js@$CONVERSE_VERSION"
    tmp="$(mktemp -d)"
    (cd "$tmp" && npm pack --silent "converse.js@$CONVERSE_VERSION" >/dev/null)
    tar -xzf "$tmp/converse.js-$CONVERSE_VERSION.tgz" -C "$tmp"
    mkdir -p "$converse_dir"
    rm -rf "$converse_dir/dist"
    mv "$tmp/package/dist" "$converse_dir/dist"
    rm -rf "$tmp"
fi

log "ok"
