#!/bin/bash
# GIMP 3 *GUI* from the test chroot on a host X server: the undo test of
# tests/test_gimp_host.py, screenshots and manual checks. The chroot comes from
# `gimp3-trixie.sh provision`.
#
#   Xvfb :99 -screen 0 1400x900x24 -nolisten tcp &
#   gimp3-gui.sh JOB_DIR [OPEN_PY] [ENV=VALUE ...]
#
# JOB_DIR is bind-mounted at /job (HOME=/job/home, so install the plug-in with
# `harmonize install-plugin gimp --gimp-dir JOB_DIR/home/.config/GIMP/3.0`); OPEN_PY (relative
# to JOB_DIR) is run by python-fu-eval once GIMP is up, e.g. to open an image with
# Gimp.Display.new(image). DISPLAY defaults to :99. Then drive it with `xdotool` and capture
# with `import -window root shot.png` (ImageMagick). Quit GIMP (or kill its gimp-3.0
# process, not this script) to end: the mounts are undone when GIMP exits.
set -euo pipefail
CACHE=${HARMONIZE_CI_CACHE:-/var/cache/harmonize-ci}
ROOT=${GIMP3_ROOT:-$CACHE/gimp3-trixie}
[ $# -ge 1 ] || { echo "usage: $0 JOB_DIR [OPEN_PY] [ENV=VALUE ...]" >&2; exit 2; }
JOB=$(realpath "$1"); shift
OPEN=()
if [ $# -ge 1 ] && [[ $1 != *=* ]]; then
  OPEN=(--batch-interpreter=python-fu-eval -b "exec(open('/job/$1').read())"); shift
fi
[ -x "$ROOT/usr/bin/gimp-3.0" ] || { echo "no chroot at $ROOT: run gimp3-trixie.sh provision" >&2; exit 2; }
exec 9>"$ROOT.lock"
flock -s 9                                # shared: a rebuild of the chroot waits for us
MOUNTS=()
cleanup() {
  local i
  for ((i = ${#MOUNTS[@]} - 1; i >= 0; i--)); do
    mountpoint -q "${MOUNTS[$i]}" && umount "${MOUNTS[$i]}" || true
  done
}
trap cleanup EXIT
mkdir -p "$ROOT/job" "$ROOT/tmp/.X11-unix" "$JOB/home"
mount -t proc proc "$ROOT/proc"; MOUNTS+=("$ROOT/proc")
mount --bind "$JOB" "$ROOT/job"; MOUNTS+=("$ROOT/job")
mount --bind /tmp/.X11-unix "$ROOT/tmp/.X11-unix"; MOUNTS+=("$ROOT/tmp/.X11-unix")
chroot "$ROOT" env -i HOME=/job/home PATH=/usr/bin:/bin LANG=C.UTF-8 DISPLAY="${DISPLAY:-:99}" \
  "$@" gimp-3.0 --no-splash "${OPEN[@]}"
