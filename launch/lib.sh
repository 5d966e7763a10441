# shellcheck shell=bash
# Helpers shared by tpu_vm.sh and gpu.sh; sourced, never run.
#
# Written for bash 3.2 too (macOS's /bin/bash), since tpu_vm.sh is usually run
# from a laptop: no associative arrays, no mapfile, no ${x,,}, and empty
# arrays are expanded as ${a[@]+"${a[@]}"} (bash < 4.4 calls "${a[@]}" unbound
# under `set -u` when the array is empty).

PROG=${PROG:-${0##*/}}
DRY_RUN=${DRY_RUN:-0}

die() {
  printf '%s: error: %s\n' "$PROG" "$*" >&2
  printf 'Run %s --help for usage.\n' "$PROG" >&2
  exit 2
}

warn() {
  printf '%s: warning: %s\n' "$PROG" "$*" >&2
}

# One word as the shell would need it written: as is when it holds only safe
# characters, else in single quotes. The output of quote_words is therefore
# valid shell (and Python's shlex.split gives the words back).
shell_quote() {
  local w=$1
  if [[ -n $w && $w != *[!A-Za-z0-9_./:=,@%+-]* ]]; then
    printf '%s' "$w"
    return
  fi
  # Each ' becomes '\'' (close, escaped quote, reopen). A loop rather than
  # ${w//...}, whose quoting rules differ between bash versions.
  local out="" rest=$w
  while [[ $rest == *\'* ]]; do
    out+="${rest%%\'*}'\\''"
    rest=${rest#*\'}
  done
  printf "'%s'" "$out$rest"
}

quote_words() {
  local out="" w
  for w in "$@"; do
    out+="${out:+ }$(shell_quote "$w")"
  done
  printf '%s' "$out"
}

# Every command is printed, one per line, prefixed "+ ", before it runs; with
# --dry-run it is only printed. The printed line is exactly what runs.
run() {
  printf '+ %s\n' "$(quote_words "$@")"
  if ((!DRY_RUN)); then
    "$@"
  fi
}

# The same for a shell pipeline given as one string (printed as written).
run_shell() {
  printf '+ %s\n' "$1"
  if ((!DRY_RUN)); then
    bash -c "$1"
  fi
}

# Value of the last --config.KEY=VALUE among the overrides, or "".
override_value() {
  local key=$1 o v=""
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    if [[ $o == "--config.$key="* ]]; then
      v=${o#*=}
    fi
  done
  printf '%s' "$v"
}

# Overrides are passed through to the trainer untouched, except the ones the
# launcher owns.
check_overrides() {
  local o
  for o in ${OVERRIDES[@]+"${OVERRIDES[@]}"}; do
    case $o in
      --config.workdir=*)
        die "$o: set the workdir with --workdir (the embedding job needs it too)" ;;
      --config.index.spawn_embed_job=*)
        die "$o: the launcher starts the embedding job itself and always sets --config.index.spawn_embed_job=False" ;;
    esac
  done
}

# Where the block store lives: data.block_store, or <workdir>/blocks.
block_store_of() {
  local workdir=$1 v
  v=$(override_value data.block_store)
  printf '%s' "${v:-$workdir/blocks}"
}

# Reads an option's value for the argument loops: `--opt value` or
# `--opt=value`. Sets OPT_VALUE and OPT_SHIFT (how many words were used).
# shellcheck disable=SC2034  # read by the callers
read_value() {
  local arg=$1
  if [[ $arg == --*=* ]]; then
    OPT_VALUE=${arg#*=}
    OPT_SHIFT=1
  else
    if (($# < 2)) || [[ $2 == --* ]]; then
      die "$arg needs a value"
    fi
    OPT_VALUE=$2
    OPT_SHIFT=2
  fi
}

is_uint() {
  [[ $1 =~ ^[0-9]+$ ]]
}
