# shellcheck shell=bash
# Helpers shared by launch/gpu.sh and launch/tpu_vm.sh (sourced; PROG set first).

die() {
  echo "$PROG: $*" >&2
  echo "$PROG: see $PROG --help" >&2
  exit 2
}

# shlex.quote: an argument as the shell reads it back.
quote() {
  if [[ $1 =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]]; then
    printf '%s' "$1"
  else
    printf "'%s'" "${1//\'/\'\"\'\"\'}"
  fi
}

join_quoted() {
  local out="" arg
  for arg in "$@"; do
    out+="${out:+ }$(quote "$arg")"
  done
  printf '%s' "$out"
}

need_value() {
  [[ $# -ge 2 && -n $2 ]] || die "$1 needs a value"
}
