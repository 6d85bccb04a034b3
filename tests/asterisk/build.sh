#!/usr/bin/env bash
# Builds the minimal Asterisk the real-PBX tests run against, once per source tarball.
#
#   tests/asterisk/build.sh            build (or reuse) and print the install prefix
#
# Inputs (environment):
#   ASTERISK_TARBALL    asterisk-X.Y.Z.tar.gz (default: the copy in ../shared/third_party/asterisk)
#   PJPROJECT_TARBALL   the pjproject tarball that Asterisk's bundled build expects (default: beside
#                       ASTERISK_TARBALL); put in configure's download cache so nothing is fetched
#   ASTERISK_CACHE      where builds are kept (default: ~/.cache/ivr-asterisk)
#
# The install prefix is $ASTERISK_CACHE/<first 16 hex of sha256(tarball + this script)>, so a
# new tarball or a change to the recipe below builds afresh and everything else reuses the
# cache. A build that did not finish leaves no `.complete` marker and is redone from scratch.
# Debian build dependencies and sipp (sip-tester) are installed when missing (needs root/apt).
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"
default_tarball=""
for up in .. ../..; do  # the shared folder beside the checkout (or beside its parent)
  candidate="$repo/$up/shared/third_party/asterisk/asterisk-22.10.1.tar.gz"
  if [[ -f "$candidate" ]]; then default_tarball="$candidate"; break; fi
done
tarball="${ASTERISK_TARBALL:-$default_tarball}"
if [[ -z "$tarball" || ! -f "$tarball" ]]; then
  echo "build.sh: no Asterisk source tarball${tarball:+ at $tarball}: set ASTERISK_TARBALL" \
       "to asterisk-22.x.tar.gz (the pjproject tarball it bundles beside it)" >&2
  exit 2
fi
tarball="$(cd "$(dirname "$tarball")" && pwd)/$(basename "$tarball")"
pjproject="${PJPROJECT_TARBALL:-}"
if [[ -z "$pjproject" ]]; then
  pjproject="$(ls "$(dirname "$tarball")"/pjproject-*.tar.bz2 2>/dev/null | head -n1 || true)"
fi
cache="${ASTERISK_CACHE:-$HOME/.cache/ivr-asterisk}"

key="$(cat "$tarball" "$0" | sha256sum | cut -c1-16)"
prefix="$cache/$key"
log() { echo "build.sh: $*" >&2; }

# --- packages --------------------------------------------------------------------------------
build_deps=(build-essential pkg-config bzip2 patch libedit-dev libjansson-dev libxml2-dev
            uuid-dev libsqlite3-dev libssl-dev)
run_deps=(sip-tester)
missing=()
for pkg in "${build_deps[@]}" "${run_deps[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" \
    || missing+=("$pkg")
done
if [[ -f "$prefix/.complete" ]]; then
  # The build is cached: only what running the tests needs must be present.
  missing=($(printf '%s\n' "${missing[@]+"${missing[@]}"}" | grep -xF -f <(printf '%s\n' "${run_deps[@]}") || true))
fi
if (( ${#missing[@]} )); then
  log "installing Debian packages: ${missing[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    log "not root: install them yourself (apt-get install ${missing[*]})"
    exit 2
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt_log="$(mktemp)"
  if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } \
      >"$apt_log" 2>&1; then
    tail -n 30 "$apt_log" >&2
    exit 1
  fi
  rm -f "$apt_log"
fi

if [[ -f "$prefix/.complete" ]]; then
  log "cached build: $prefix"
  echo "$prefix"
  exit 0
fi

# --- build -----------------------------------------------------------------------------------
started=$(date +%s)
rm -rf "$prefix"
mkdir -p "$prefix/src" "$prefix/downloads"
log "building Asterisk from $(basename "$tarball") into $prefix (about 3 min on 2 cores)"
tar -xzf "$tarball" -C "$prefix/src" --strip-components=1
if [[ -n "$pjproject" && -f "$pjproject" ]]; then
  cp "$pjproject" "$prefix/downloads/"
else
  log "no pjproject tarball found beside the Asterisk tarball: configure will try to download it"
fi
cd "$prefix/src"

log "configure"
./configure --prefix="$prefix" --with-pjproject-bundled \
  --with-download-cache="$prefix/downloads" --with-externals-cache="$prefix/downloads" \
  --without-x11 --without-gtk2 >"$prefix/configure.log" 2>&1 \
  || { tail -n 40 "$prefix/configure.log" >&2; exit 1; }

# Only what the tests use: ARI/Stasis, PJSIP, external media (chan_rtp), bridges, G.711, the
# static dialplan. No sound downloads, no CDR/CEL back-ends, no native CPU tuning (the cache
# may move between machines).
make menuselect.makeopts >"$prefix/menuselect.log" 2>&1
ms=menuselect/menuselect
$ms --disable-category MENUSELECT_ADDONS --disable-category MENUSELECT_APPS \
    --disable-category MENUSELECT_CDR --disable-category MENUSELECT_CEL \
    --disable-category MENUSELECT_CHANNELS --disable-category MENUSELECT_TESTS \
    --disable-category MENUSELECT_UTILS --disable-category MENUSELECT_AGIS \
    --disable-category MENUSELECT_CORE_SOUNDS --disable-category MENUSELECT_MOH \
    --disable-category MENUSELECT_EXTRA_SOUNDS \
    --disable BUILD_NATIVE \
    --enable app_stasis --enable app_dial --enable app_echo --enable app_playback \
    --enable chan_pjsip --enable chan_rtp --enable chan_bridge_media \
    --enable codec_ulaw --enable codec_alaw --enable format_wav --enable format_pcm \
    --enable pbx_config \
    menuselect.makeopts >>"$prefix/menuselect.log" 2>&1

jobs="$(nproc 2>/dev/null || echo 2)"
log "make -j$jobs (full log: $prefix/make.log)"
# A line every 30 s, so a long build is visibly alive.
( while sleep 30; do
    compiled=$(grep -c '\[CC\]' "$prefix/make.log" 2>/dev/null || true)
    log "  ... $(( $(date +%s) - started )) s, ${compiled:-0} files compiled"
  done ) &
progress=$!
trap 'kill $progress 2>/dev/null || true' EXIT
# The bundled pjproject has a parallel-build race (an `Error 2` with no compiler error); a
# second, serial make picks up where the first stopped.
if ! make -j"$jobs" >"$prefix/make.log" 2>&1; then
  log "parallel make stopped; finishing serially"
  make >>"$prefix/make.log" 2>&1 || { tail -n 40 "$prefix/make.log" >&2; exit 1; }
fi
kill $progress 2>/dev/null || true
log "make install"
make install >"$prefix/install.log" 2>&1 || { tail -n 40 "$prefix/install.log" >&2; exit 1; }

for mod in res_ari.so res_stasis.so app_stasis.so chan_pjsip.so res_pjsip.so chan_rtp.so \
           res_rtp_asterisk.so codec_ulaw.so bridge_simple.so bridge_softmix.so pbx_config.so \
           res_http_websocket.so res_ari_channels.so res_ari_bridges.so; do
  [[ -f "$prefix/lib/asterisk/modules/$mod" ]] || { log "module missing after install: $mod"; exit 1; }
done
rm -rf "$prefix/src"   # 600+ MB of objects; the install is all the tests need
touch "$prefix/.complete"
log "built in $(( $(date +%s) - started )) s"
echo "$prefix"
