#!/bin/bash
# The Debian 13 ("trixie") host chroot: GIMP 3.0 and Krita 5.2 from Debian's packages, in one
# debootstrap chroot, for the real-host plug-in tests (the machine's own Krita 5.1 runs natively).
# One chroot rather than a second one for Krita: the two share the minbase system, Python 3.13,
# pyzmq/msgpack and many image libraries, so Krita adds ~0.9 GB and one apt run (~1-2 min) to the
# cache instead of another debootstrap (+0.2 GB, ~1 min) and a second copy of all of that. The
# stamp holds the package list, so adding a package rebuilds the chroot once.
#
#   gimp3-trixie.sh status
#       Exit 0 and print the chroot path when it is built and current; else exit 1 and say
#       why. Builds nothing and needs no root (the tests call it first).
#   gimp3-trixie.sh provision
#       Build the chroot once under ${HARMONIZE_CI_CACHE:-/var/cache/harmonize-ci}/gimp3-trixie
#       (about 1 GB, ~2-4 min cold); later calls reuse it. Prints the chroot path last. The
#       tests only call this with HARMONIZE_BUILD_HOSTS=1 (.ci/run sets it).
#   gimp3-trixie.sh run JOB_DIR BATCH_PY [ENV=VALUE ...]
#       Bind-mount the host folder JOB_DIR at /job in the chroot and run
#       `gimp-console-3.0 -i` with the batch script /job/BATCH_PY (python-fu-eval), as
#       HOME=/job/home, with a clean environment (env -i, PATH=/usr/bin:/bin) plus ENV=VALUE.
#       The exit code is GIMP's: 0 ok, 64 when the batch script raised.
#   gimp3-trixie.sh gui JOB_DIR [OPEN_PY] [ENV=VALUE ...]
#       The same, but the GIMP *GUI* on the host's X server $DISPLAY (default :99; its
#       /tmp/.X11-unix is bind-mounted too), e.g. on `Xvfb :99 -screen 0 1400x900x24 -nolisten
#       tcp`. OPEN_PY (in JOB_DIR) runs through python-fu-eval once GIMP is up: the undo and
#       dialog tests of tests/test_gimp_host.py, screenshots, manual checks. Drive it with
#       xdotool; it ends when GIMP quits.
#   gimp3-trixie.sh exec [--bind DIR]... [ENV=VALUE ...] PROGRAM [ARG ...]
#       Run PROGRAM (e.g. kritarunner, krita) in the chroot with a clean environment
#       (env -i, PATH=/usr/bin:/bin, LANG=C.UTF-8) plus ENV=VALUE, each host folder DIR
#       bind-mounted at the *same* path inside (so host paths in arguments, HOME and spec files
#       work unchanged). With $DISPLAY set (e.g. under the host's xvfb-run) the X socket folder
#       and the folder of $XAUTHORITY are bound too, and both variables are passed on.
#       The exit code is PROGRAM's.
#
# Needs root and debootstrap (`apt-get install debootstrap`; never installed here). Only /proc and
# the job folder are mounted (never /dev), and both are unmounted on exit. run, gui and exec
# mount them in a mount namespace of their own (unshare), so two runs at once (two test
# sessions on one machine) never see each other's /job, and nothing stays mounted even if a run
# is killed. Heavy steps run under `nice -n 10`.
set -euo pipefail

CACHE=${HARMONIZE_CI_CACHE:-/var/cache/harmonize-ci}
ROOT=${GIMP3_ROOT:-$CACHE/gimp3-trixie}
# Krita's embedded Python imports PyQt5 (a Recommends of krita, so named here).
PACKAGES="gimp krita python3-pyqt5 python3-zmq python3-msgpack"
STAMP="trixie minbase: $PACKAGES"

die() { echo "gimp3-trixie.sh: $*" >&2; exit 2; }
need_root() { [ "$(id -u)" = 0 ] || die "needs root (debootstrap, chroot, mount)"; }

MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    mountpoint -q "${MOUNTS[$i]}" && umount "${MOUNTS[$i]}" || true
  done
}
trap cleanup EXIT
do_mount() { mount "$@"; MOUNTS+=("${!#}"); }

# Delete a chroot tree, but never while anything is mounted below it: a leftover bind mount
# (job folder, X socket) is on the same file system, so even `rm --one-file-system` would
# follow it into host folders.
remove_tree() {
  local dir=$1 m
  [ -e "$dir" ] || return 0
  for m in "$dir/tmp/.X11-unix" "$dir/job" "$dir/proc"; do
    if mountpoint -q "$m"; then umount "$m" || die "cannot unmount $m; not deleting $dir"; fi
  done
  if awk -v d="$(realpath "$dir")/" 'index($2 "/", d) == 1 { found = 1 } END { exit !found }' \
      /proc/mounts; then
    die "something is still mounted below $dir; unmount it first (not deleting)"
  fi
  rm -rf --one-file-system "$dir"
}

# Is the chroot at $ROOT built from the current package list?
ready() {
  [ "$(cat "$ROOT/.harmonize-stamp" 2>/dev/null)" = "$STAMP" ] \
    && [ -x "$ROOT/usr/bin/gimp-console-3.0" ] && [ -x "$ROOT/usr/bin/kritarunner" ]
}

status() {
  if ready; then echo "$ROOT"; return 0; fi
  if [ -e "$ROOT" ]; then
    echo "the Debian 13 chroot (GIMP 3, Krita 5.2) at $ROOT is incomplete or out of date" >&2
  else
    echo "no Debian 13 chroot (GIMP 3, Krita 5.2) at $ROOT" >&2
  fi
  return 1
}

provision() {
  need_root
  mkdir -p "$(dirname "$ROOT")"
  exec 9>"$ROOT.lock"
  flock 9                                 # one builder at a time; others wait, then reuse
  if ready; then
    echo "$ROOT"; return 0
  fi
  command -v debootstrap >/dev/null \
    || die "debootstrap is not installed (apt-get install debootstrap)"
  local tmp="$ROOT.building"
  remove_tree "$tmp"
  remove_tree "$ROOT"
  nice -n 10 debootstrap --variant=minbase trixie "$tmp" >"$tmp.log" 2>&1 \
    || { tail -20 "$tmp.log" >&2; die "debootstrap failed (log: $tmp.log)"; }
  do_mount -t proc proc "$tmp/proc"
  nice -n 10 chroot "$tmp" env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends $PACKAGES \
    >>"$tmp.log" 2>&1 || { tail -20 "$tmp.log" >&2; die "apt-get in the chroot failed"; }
  chroot "$tmp" apt-get clean
  umount "$tmp/proc"
  echo "$STAMP" >"$tmp/.harmonize-stamp"
  mv "$tmp" "$ROOT"
  rm -f "$tmp.log"
  echo "$ROOT"
}

# Mount /proc into the chroot, holding the lock shared.
enter_root() {
  need_root
  ready || die "no current chroot at $ROOT: run '$0 provision' first"
  exec 9>"$ROOT.lock"
  flock -s 9                              # shared: a rebuild waits until this run is done
  do_mount -t proc proc "$ROOT/proc"
}

# ... and the job folder JOB at /job.
enter() {
  enter_root
  mkdir -p "$ROOT/job" "$1/home"
  do_mount --bind "$1" "$ROOT/job"
}

# Bind the host's X socket folder into the chroot (the display of gui/exec).
bind_x11() {
  mkdir -p "$ROOT/tmp/.X11-unix"
  do_mount --bind /tmp/.X11-unix "$ROOT/tmp/.X11-unix"
}

run() {
  [ $# -ge 2 ] || die "usage: $0 run JOB_DIR BATCH_PY [ENV=VALUE ...]"
  local job batch
  job=$(realpath "$1"); batch=$2; shift 2
  [ -f "$job/$batch" ] || die "no batch script $job/$batch"
  enter "$job"
  # env -i: the host's PATH (pyenv shims, venvs) must not choose the plug-in's python3.
  nice -n 10 chroot "$ROOT" env -i HOME=/job/home PATH=/usr/bin:/bin LANG=C.UTF-8 "$@" \
    gimp-console-3.0 -i --batch-interpreter=python-fu-eval \
    -b "exec(open('/job/$batch').read())" --quit
}

gui() {
  [ $# -ge 1 ] || die "usage: $0 gui JOB_DIR [OPEN_PY] [ENV=VALUE ...]"
  local job open=()
  job=$(realpath "$1"); shift
  if [ $# -ge 1 ] && [[ $1 != *=* ]]; then
    [ -f "$job/$1" ] || die "no script $job/$1"
    open=(--batch-interpreter=python-fu-eval -b "exec(open('/job/$1').read())"); shift
  fi
  enter "$job"
  bind_x11
  chroot "$ROOT" env -i HOME=/job/home PATH=/usr/bin:/bin LANG=C.UTF-8 \
    DISPLAY="${DISPLAY:-:99}" "$@" gimp-3.0 --no-splash "${open[@]}"
}

# Bind DIR at the same path inside the chroot (an absolute, existing folder).
bind_same() {
  local dir
  dir=$(realpath "$1")
  [ -d "$dir" ] || die "no folder $1 to bind"
  case "$dir" in /proc* | /sys* | /dev* | /) die "will not bind $dir into the chroot" ;; esac
  mkdir -p "$ROOT$dir"
  do_mount --bind "$dir" "$ROOT$dir"
}

exec_in() {
  local binds=() envs=() dir
  while [ $# -ge 2 ] && [ "$1" = --bind ]; do binds+=("$2"); shift 2; done
  while [ $# -ge 1 ] && [[ $1 == *=* ]]; do envs+=("$1"); shift; done
  [ $# -ge 1 ] || die "usage: $0 exec [--bind DIR]... [ENV=VALUE ...] PROGRAM [ARG ...]"
  enter_root
  for dir in "${binds[@]}"; do bind_same "$dir"; done
  if [ -n "${DISPLAY:-}" ]; then
    bind_x11
    envs=("DISPLAY=$DISPLAY" "${envs[@]}")
    if [ -n "${XAUTHORITY:-}" ]; then
      bind_same "$(dirname "$XAUTHORITY")"
      envs=("XAUTHORITY=$XAUTHORITY" "${envs[@]}")
    fi
  fi
  nice -n 10 chroot "$ROOT" env -i PATH=/usr/bin:/bin LANG=C.UTF-8 "${envs[@]}" "$@"
}

# Re-run this command in a private mount namespace (once: the variable marks the second start).
private_mounts() {
  if [ -z "${GIMP3_PRIVATE_MOUNTS:-}" ]; then
    need_root
    GIMP3_PRIVATE_MOUNTS=1 exec unshare --mount --propagation private bash "$0" "$@"
  fi
}

case "${1:-}" in
  status) status ;;
  provision) provision ;;
  run) private_mounts "$@"; shift; run "$@" ;;
  gui) private_mounts "$@"; shift; gui "$@" ;;
  exec) private_mounts "$@"; shift; exec_in "$@" ;;
  *) die "usage: $0 status | provision | run JOB_DIR BATCH_PY [ENV=VALUE ...] | gui JOB_DIR [OPEN_PY] [ENV=VALUE ...] | exec [--bind DIR]... [ENV=VALUE ...] PROGRAM [ARG ...]" ;;
esac
