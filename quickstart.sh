#!/bin/sh
# Quick start on a fresh Linux machine that has only Python 3: each verb sets up a project-local
# virtual environment (pip install into the system Python is refused on Debian 12 / Ubuntu 24.04,
# PEP 668), then runs the demo or the tests in it. The environment is reused while the requirements
# files (and the Python) are unchanged, and rebuilt from scratch when they change.
set -eu

usage() {
  cat <<'EOF'
usage: ./quickstart.sh VERB [ARGS]

verbs:
  demo          set up the environment, then run the offline demo end to end:
                python main.py --demo=True, then predict the demo clips with its checkpoint
  test [ARGS]   set up the environment, then run the test suite: python -m pytest -n auto [ARGS]
  setup         only set up the environment (what .ci/run does before running the tests itself)
  --help        this message

environment:
  FMA_VENV          the virtual environment's folder (default: .venv in the repository)
  FMA_REQUIREMENTS  the requirements files to install, separated by spaces, relative to the
                    repository (default: requirements.txt requirements-app.txt)
EOF
}

die() {
  printf 'quickstart.sh: %s\n' "$*" >&2
  exit 1
}

say() {
  printf 'quickstart.sh: %s\n' "$*" >&2
}

# The prefix a system install needs: nothing for root, sudo for everyone else.
sudo_prefix() {
  if [ "$(id -u)" = 0 ]; then echo ""; else echo "sudo "; fi
}

# The first Python >= 3.10 on PATH (python3 first; a versioned one where python3 is older).
find_python() {
  for candidate in python3 python3.13 python3.12 python3.11 python3.10; do
    if command -v "$candidate" >/dev/null 2>&1 &&
      "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  if command -v python3 >/dev/null 2>&1; then
    version=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
    die "this project needs Python 3.10 or newer and python3 is $version. Install a newer Python" \
      "(on Debian/Ubuntu: $(sudo_prefix)apt-get install python3.11 python3.11-venv), or use conda" \
      "(conda env create --file environment.yml, see README), then rerun."
  elif command -v apt-get >/dev/null 2>&1; then
    die "no python3 found. Install it with: $(sudo_prefix)apt-get install python3 python3-venv, then rerun."
  fi
  die "no python3 found. Install Python 3.10 or newer with your system's package manager, then rerun."
}

# Debian and Ubuntu ship venv's ensurepip in a separate package (python3.X-venv): without it
# `python3 -m venv` leaves a half-made environment with no pip, so check before making anything.
check_venv_module() {
  if "$1" -c 'import venv' 2>/dev/null && "$1" -m ensurepip --version >/dev/null 2>&1; then
    return 0
  fi
  version=$("$1" -c 'import sys; print("%d.%d" % sys.version_info[:2])')
  if command -v apt-get >/dev/null 2>&1; then
    die "$1 ($version) cannot make virtual environments: its venv module (ensurepip) is missing." \
      "Install it with: $(sudo_prefix)apt-get install python$version-venv, then rerun."
  fi
  die "$1 ($version) cannot make virtual environments: its venv module (ensurepip) is missing." \
    "Install your system's package of Python $version's venv module, then rerun."
}

# What the environment is built from: the interpreter and each requirements file's name and content.
requirements_hash() {
  "$python" - "$@" <<'EOF'
import hashlib, sys
digest = hashlib.sha256(f"{sys.executable} {sys.version}\n".encode())
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        digest.update(f"{path}\n".encode() + f.read())
print(digest.hexdigest()[:16])
EOF
}

# Make $venv hold the requirements files given as arguments. $venv/.quickstart marks a folder this
# script made: empty while it is being built, the requirements' hash once the install completed, so an
# interrupted install is never taken as complete (and a folder it did not make is never deleted).
ensure_venv() {
  for requirements in "$@"; do
    [ -f "$requirements" ] || die "requirements file $requirements not found in $(pwd)" \
      "(FMA_REQUIREMENTS=\"$*\"): name files that exist, or unset FMA_REQUIREMENTS."
  done
  python=$(find_python)
  hash=$(requirements_hash "$@")
  marker="$venv/.quickstart"
  if [ -f "$marker" ] && [ "$(cat "$marker")" = "$hash" ]; then
    say "reusing $venv (requirements unchanged)"
    return 0
  fi
  if [ -e "$venv" ] && [ ! -f "$marker" ] && { [ ! -d "$venv" ] || [ -n "$(ls -A "$venv")" ]; }; then
    die "$venv exists and was not made by quickstart.sh, so it will not be deleted." \
      "Point FMA_VENV at a new folder, or remove $venv yourself, then rerun."
  fi
  check_venv_module "$python"
  say "building $venv with $python from $* (a few minutes: torch is a 4.6 GB download)"
  rm -f "$marker"
  rm -rf "$venv"
  mkdir -p "$venv"
  : >"$marker"
  "$python" -m venv "$venv"
  count=$#
  for requirements in "$@"; do set -- "$@" -r "$requirements"; done
  shift "$count"
  "$venv/bin/python" -m pip install --disable-pip-version-check "$@"
  printf '%s\n' "$hash" >"$marker.tmp"
  mv "$marker.tmp" "$marker"
  say "$venv is ready"
}

# What `source $venv/bin/activate` does, in POSIX sh: the venv's python and tools come first.
activate() {
  VIRTUAL_ENV=$venv
  PATH="$venv/bin:$PATH"
  export VIRTUAL_ENV PATH
  unset PYTHONHOME
}

# FMA_VENV is relative to where the script is run from; the default, .venv, to the repository.
case ${FMA_VENV:-} in
  "") venv="" ;;
  /*) venv=$FMA_VENV ;;
  *) venv="$(pwd)/$FMA_VENV" ;;
esac
cd "$(dirname "$0")"
[ -n "$venv" ] || venv="$(pwd)/.venv"

set_up() {
  # Word splitting is wanted here: FMA_REQUIREMENTS is a list of file names.
  # shellcheck disable=SC2086
  ensure_venv ${FMA_REQUIREMENTS:-requirements.txt requirements-app.txt}
  activate
}

verb=${1:-}
[ $# -eq 0 ] || shift
case $verb in
  demo)
    [ $# -eq 0 ] || die "demo takes no arguments. For other settings run main.py in the environment," \
      "e.g. $venv/bin/python main.py --demo=True --model=cnn1d (see README)."
    set_up
    python main.py --demo=True
    python pre_trained_models.py --checkpoint=runs/demo_crnn/latest/best.pt data/demo/fma_small
    ;;
  test)
    set_up
    exec python -m pytest -n auto "$@"
    ;;
  setup)
    [ $# -eq 0 ] || die "setup takes no arguments."
    set_up
    say "the environment is ready: . $venv/bin/activate"
    ;;
  -h | --help | help)
    usage
    ;;
  *)
    [ -z "$verb" ] || say "unknown verb '$verb'"
    usage >&2
    exit 2
    ;;
esac
