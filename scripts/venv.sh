#!/usr/bin/env bash
# Make the virtual environment DIR on the fastest Python 3.11 this machine has (`make` calls this).
#
#   scripts/venv.sh DIR        PYTHON=/path/to/python3.11 overrides the choice
#
# The distribution's /usr/bin/python3.11 comes first: Debian and Ubuntu build it with profile-guided
# and link-time optimization, linked statically, and it runs our serving path's Python with 20-30% less
# CPU than a plain `./configure` build such as pyenv's default (docs/decisions.md, "The interpreter").
# A venv that exists but was made with another interpreter is made anew, so switching takes effect.
set -euo pipefail
dir=${1:?usage: scripts/venv.sh DIR}
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x /usr/bin/python3.11 ] && /usr/bin/python3.11 -c 'import ensurepip' 2>/dev/null; then
    python=/usr/bin/python3.11
  elif ! python=$(command -v python3.11); then
    echo "scripts/venv.sh: Python 3.11 is needed: install python3.11 and python3.11-venv, or set PYTHON" >&2
    exit 1
  fi
fi
want=$("$python" -c 'import sys; print(sys._base_executable)')
if [ -x "$dir/bin/python" ]; then
  have=$(sed -n 's/^executable = //p' "$dir/pyvenv.cfg")
  [ "$have" = "$want" ] && exit 0
  echo "scripts/venv.sh: $dir was made with ${have:-another Python}; making it anew with $want" >&2
  rm -rf "$dir"
fi
"$python" -m venv "$dir"
