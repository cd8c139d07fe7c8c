#!/bin/bash
# Check that every program the real-host tests run is installed (tests/hosts/tools.txt).
#
#   need-tools.sh             exit 0 when all are there; else name each missing one and the
#                             apt package to install, and exit 1
#   need-tools.sh --packages  print the apt packages of the list (what .ci/run installs)
#
# $HARMONIZE_HOST_PYTHON (default /usr/bin/python3) is the Python that must import the
# `py:` modules: Debian's, which Krita embeds.
set -euo pipefail
HERE=${BASH_SOURCE[0]%/*}
[ "$HERE" != "${BASH_SOURCE[0]}" ] || HERE=.   # called as "bash need-tools.sh"
LIST="$HERE/tools.txt"
PYTHON=${HARMONIZE_HOST_PYTHON:-/usr/bin/python3}

entries() { grep -v '^[[:space:]]*\(#\|$\)' "$LIST"; }

if [ "${1:-}" = --packages ]; then
  entries | while read -r _tool package; do echo "$package"; done | sort -u | tr '\n' ' '
  echo
  exit 0
fi
[ $# -eq 0 ] || { echo "usage: $0 [--packages]" >&2; exit 2; }

missing=()
while read -r tool package; do
  if [[ $tool == py:* ]]; then
    "$PYTHON" -c "import ${tool#py:}" >/dev/null 2>&1 && continue
    echo "need-tools: $PYTHON cannot import ${tool#py:} (apt-get install $package)" >&2
  else
    command -v "$tool" >/dev/null 2>&1 && continue
    echo "need-tools: $tool is not installed (apt-get install $package)" >&2
  fi
  missing+=("$package")
done < <(entries)

if [ ${#missing[@]} -gt 0 ]; then
  echo "need-tools: the host tests cannot run; install: apt-get install" \
    "$(printf '%s\n' "${missing[@]}" | sort -u | tr '\n' ' ')" >&2
  exit 1
fi
