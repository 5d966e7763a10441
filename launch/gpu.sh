#!/usr/bin/env bash
# REALM pretraining on the GPUs of one machine (or of several, one launch per
# node): the embedding job runs as its own process on the last --embed_gpus
# GPUs, the trainer on the rest.
#
#   launch/gpu.sh --workdir=/data/realm [--config=configs/pretrain_ccnews.py] \
#       [--num_gpus=8] [--embed_gpus=1] [--dry-run] [--config.a.b=v ...]
#
# See launch/README.md, and --help for every option.
set -euo pipefail

PROG=gpu.sh
case ${BASH_SOURCE[0]} in
  */*) LAUNCH_DIR=${BASH_SOURCE[0]%/*} ;;
  *) LAUNCH_DIR=. ;;
esac
LAUNCH_DIR=$(cd "$LAUNCH_DIR" && pwd)
REPO=${LAUNCH_DIR%/*}
# shellcheck source=launch/lib.sh
source "$LAUNCH_DIR/lib.sh"

# With --embed_gpus=0 both processes share every GPU; JAX would otherwise
# preallocate 75% of each GPU's memory in the first process to start.
TRAIN_MEM_FRACTION=0.70
EMBED_MEM_FRACTION=0.20

usage() {
  cat <<'EOF'
Usage: launch/gpu.sh --workdir=DIR [options] [--config.a.b=v ...]

Builds the block store once (launch/prepare_data.py, on the CPU), starts the
embedding job (python -m realm_jax.main ... --config.task=embed) in the
background on its own GPU(s), then runs the trainer (python -m
realm_jax.main) in the foreground on the other GPUs. When the trainer
exits, or this script is interrupted, the embedding job is stopped.

Required:
  --workdir=DIR        the run's directory (local or NFS; not gs://: the code
                       needs POSIX files, so mount a bucket with gcsfuse first)

Options:
  --config=F           config file (default configs/pretrain_ccnews.py)
  --num_gpus=N         GPUs to use (default: those in CUDA_VISIBLE_DEVICES,
                       else all that nvidia-smi lists)
  --embed_gpus=K       GPUs for the embedding job, taken from the end of the
                       list (default 1); 0 shares every GPU between the two
                       processes (XLA_PYTHON_CLIENT_MEM_FRACTION 0.70 / 0.20)
  --num_nodes=N        machines in the job (default 1); run this script on
                       each with the same arguments and its own --node_rank
  --node_rank=R        this machine's index, 0..N-1; node 0 prepares the data
                       and runs the embedding job
  --coordinator=H:P    host:port of node 0 for jax.distributed (N > 1)
  --python=PY          interpreter (default .venv/bin/python if present,
                       else python3)
  --log_dir=DIR        where embed.log goes (default WORKDIR/logs)
  --skip_prepare       the block store is built already
  --dry-run            print every command, one per line after "+ ", and run
                       none
  -h, --help           this text

The trainer, the embedding job and the data preparation all run with
--config and every --config.KEY=VALUE given here, so they agree on every
shared setting (index.*, data.block_store).
EOF
}

# ------------------------------------------------------------------ arguments

WORKDIR="" CONFIG=configs/pretrain_ccnews.py
NUM_GPUS="" EMBED_GPUS=1
NUM_NODES=1 NODE_RANK="" COORDINATOR=""
PYTHON="" LOG_DIR="" SKIP_PREPARE=0
OVERRIDES=()

parse_args() {
  while (($#)); do
    case $1 in
      -h|--help) usage; exit 0 ;;
      --dry-run|--dry_run) DRY_RUN=1; shift ;;
      --skip_prepare|--skip-prepare) SKIP_PREPARE=1; shift ;;
      --config.*=*) OVERRIDES+=("$1"); shift ;;
      --config.*) die "$1 needs a value: --config.KEY=VALUE" ;;
      --workdir|--workdir=*|--config|--config=*|--num_gpus|--num_gpus=*|\
      --embed_gpus|--embed_gpus=*|--num_nodes|--num_nodes=*|--node_rank|\
      --node_rank=*|--coordinator|--coordinator=*|--python|--python=*|\
      --log_dir|--log_dir=*)
        read_value "$@"
        case ${1%%=*} in
          --workdir) WORKDIR=$OPT_VALUE ;;
          --config) CONFIG=$OPT_VALUE ;;
          --num_gpus) NUM_GPUS=$OPT_VALUE ;;
          --embed_gpus) EMBED_GPUS=$OPT_VALUE ;;
          --num_nodes) NUM_NODES=$OPT_VALUE ;;
          --node_rank) NODE_RANK=$OPT_VALUE ;;
          --coordinator) COORDINATOR=$OPT_VALUE ;;
          --python) PYTHON=$OPT_VALUE ;;
          --log_dir) LOG_DIR=$OPT_VALUE ;;
        esac
        shift "$OPT_SHIFT" ;;
      *) die "unknown argument: $1" ;;
    esac
  done
}

# The GPU ids this launch may use, comma-separated, into GPUS.
visible_gpus() {
  local inherited=${CUDA_VISIBLE_DEVICES:-}
  if [[ -n $NUM_GPUS ]]; then
    if ! is_uint "$NUM_GPUS" || ((NUM_GPUS < 1)); then
      die "--num_gpus=$NUM_GPUS: expected a positive integer"
    fi
    if [[ -n $inherited ]]; then
      # Within an allocation (e.g. a scheduler's CUDA_VISIBLE_DEVICES): the
      # first N of those.
      local ids=() i
      IFS=, read -r -a ids <<<"$inherited"
      if ((${#ids[@]} < NUM_GPUS)); then
        die "--num_gpus=$NUM_GPUS, but CUDA_VISIBLE_DEVICES=$inherited lists ${#ids[@]}"
      fi
      GPUS=${ids[0]}
      for ((i = 1; i < NUM_GPUS; i++)); do GPUS+=",${ids[i]}"; done
    else
      local i
      GPUS=0
      for ((i = 1; i < NUM_GPUS; i++)); do GPUS+=",$i"; done
    fi
  elif [[ -n $inherited ]]; then
    GPUS=$inherited
  elif command -v nvidia-smi >/dev/null 2>&1; then
    local n
    n=$(nvidia-smi -L | grep -c '^GPU ' || true)
    if ((n < 1)); then die "nvidia-smi lists no GPU"; fi
    NUM_GPUS=$n
    visible_gpus
  else
    die "cannot tell which GPUs to use (no nvidia-smi, no CUDA_VISIBLE_DEVICES): pass --num_gpus=N"
  fi
}

# Splits GPUS into TRAIN_GPUS and EMBED_GPU_IDS: the embedding job takes the
# last --embed_gpus ids, the trainer the rest.
split_gpus() {
  local ids=()
  IFS=, read -r -a ids <<<"$GPUS"
  local n=${#ids[@]} i
  if ((EMBED_GPUS == 0)); then
    TRAIN_GPUS=$GPUS
    EMBED_GPU_IDS=$GPUS
    return
  fi
  if ((EMBED_GPUS >= n)); then
    die "--embed_gpus=$EMBED_GPUS leaves no GPU for the trainer: $n GPU(s) available ($GPUS); use --embed_gpus=0 to share them"
  fi
  TRAIN_GPUS=${ids[0]}
  for ((i = 1; i < n - EMBED_GPUS; i++)); do TRAIN_GPUS+=",${ids[i]}"; done
  EMBED_GPU_IDS=${ids[n - EMBED_GPUS]}
  for ((i = n - EMBED_GPUS + 1; i < n; i++)); do EMBED_GPU_IDS+=",${ids[i]}"; done
}

check_args() {
  if [[ -z $WORKDIR ]]; then die "--workdir is required"; fi
  if [[ $WORKDIR == gs://* ]]; then
    die "--workdir=$WORKDIR: the code reads and writes the workdir as POSIX files (renames, memory maps); mount the bucket (gcsfuse) and pass the mounted path"
  fi
  # Relative paths are the caller's; the processes run from the repository.
  if [[ $WORKDIR != /* ]]; then WORKDIR=$PWD/$WORKDIR; fi
  LOG_DIR=${LOG_DIR:-$WORKDIR/logs}
  if [[ $LOG_DIR != /* ]]; then LOG_DIR=$PWD/$LOG_DIR; fi
  if [[ $CONFIG != /* && -f $PWD/$CONFIG && $PWD != "$REPO" ]]; then
    CONFIG=$PWD/$CONFIG
  fi
  if [[ $CONFIG != /* && ! -f $REPO/$CONFIG ]] || [[ $CONFIG == /* && ! -f $CONFIG ]]; then
    die "--config=$CONFIG: no such file"
  fi

  if ! is_uint "$EMBED_GPUS"; then
    die "--embed_gpus=$EMBED_GPUS: expected an integer >= 0"
  fi
  if ! is_uint "$NUM_NODES" || ((NUM_NODES < 1)); then
    die "--num_nodes=$NUM_NODES: expected a positive integer"
  fi
  if ((NUM_NODES > 1)); then
    if [[ -z $NODE_RANK ]]; then die "--num_nodes=$NUM_NODES needs --node_rank"; fi
    if [[ -z $COORDINATOR ]]; then
      die "--num_nodes=$NUM_NODES needs --coordinator=HOST:PORT (node 0's address, reachable from every node)"
    fi
    if [[ ! $COORDINATOR =~ ^[^:[:space:]]+:[0-9]+$ ]]; then
      die "--coordinator=$COORDINATOR: expected HOST:PORT"
    fi
  else
    if [[ -n $COORDINATOR ]]; then die "--coordinator is only for --num_nodes > 1"; fi
    NODE_RANK=${NODE_RANK:-0}
  fi
  if ! is_uint "$NODE_RANK" || ((NODE_RANK >= NUM_NODES)); then
    die "--node_rank=$NODE_RANK: expected 0..$((NUM_NODES - 1))"
  fi
  check_overrides

  if [[ -z $PYTHON ]]; then
    if [[ -x $REPO/.venv/bin/python ]]; then PYTHON=$REPO/.venv/bin/python; else PYTHON=python3; fi
  fi
  visible_gpus
  split_gpus
  check_batch_size
}

# The trainer refuses a batch that does not split evenly over its devices;
# say so now, before the data preparation, when the batch size is given here.
check_batch_size() {
  local batch ids=() devices
  batch=$(override_value train.batch_size)
  if [[ -z $batch ]] || ! is_uint "$batch"; then return 0; fi
  IFS=, read -r -a ids <<<"$TRAIN_GPUS"
  devices=$((${#ids[@]} * NUM_NODES))
  if ((batch % devices)); then
    die "--config.train.batch_size=$batch does not split over the trainer's $devices GPU(s) ($TRAIN_GPUS on each of $NUM_NODES node(s)); change --embed_gpus or the batch size"
  fi
}

# ------------------------------------------------------------------ commands

EMBED_PID=""

# Stops the embedding job when the trainer ends or this script is stopped.
# (The job also watches index.embed_parent_pid, so it exits if this shell is
# killed with SIGKILL and the trap never runs.)
cleanup() {
  if [[ -n $EMBED_PID ]] && kill -0 "$EMBED_PID" 2>/dev/null; then
    run kill "$EMBED_PID"
    wait "$EMBED_PID" 2>/dev/null || true
  fi
}

config_args() {
  CONFIG_ARGS=(--config="$CONFIG" --config.workdir="$WORKDIR"
               ${OVERRIDES[@]+"${OVERRIDES[@]}"})
}

prepare() {
  local blocks
  blocks=$(block_store_of "$WORKDIR")
  if ((NODE_RANK == 0)); then
    run env JAX_PLATFORMS=cpu "$PYTHON" launch/prepare_data.py "${CONFIG_ARGS[@]}"
  else
    # Node 0 builds it; starting before it exists would build it again here.
    printf '+ %s\n' "wait until $(shell_quote "$blocks/manifest.json") exists"
    if ((!DRY_RUN)); then
      while [[ ! -f $blocks/manifest.json ]]; do sleep 10; done
    fi
  fi
}

start_embed() {
  local env_args=(CUDA_VISIBLE_DEVICES="$EMBED_GPU_IDS")
  if ((EMBED_GPUS == 0)); then
    env_args+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$EMBED_MEM_FRACTION")
  fi
  # The trainer's config and overrides, as task=embed. The job exits when
  # this shell is gone (embed_parent_pid), even if it was SIGKILLed.
  local cmd=(env "${env_args[@]}" "$PYTHON" -m realm_jax.main "${CONFIG_ARGS[@]}"
             --config.task=embed --config.index.embed_parent_pid="$$")
  local log=$LOG_DIR/embed.log
  printf '+ %s > %s 2>&1 &\n' "$(quote_words "${cmd[@]}")" "$(shell_quote "$log")"
  if ((!DRY_RUN)); then
    mkdir -p "$LOG_DIR"
    "${cmd[@]}" >>"$log" 2>&1 &
    EMBED_PID=$!
  fi
}

run_trainer() {
  local env_args=(CUDA_VISIBLE_DEVICES="$TRAIN_GPUS")
  if ((EMBED_GPUS == 0)); then
    env_args+=("XLA_PYTHON_CLIENT_MEM_FRACTION=$TRAIN_MEM_FRACTION")
  fi
  if ((NUM_NODES > 1)); then
    # What realm_jax.train.partition.maybe_initialize_distributed reads.
    env_args+=(JAX_COORDINATOR_ADDRESS="$COORDINATOR"
               JAX_NUM_PROCESSES="$NUM_NODES" JAX_PROCESS_ID="$NODE_RANK")
  fi
  run env "${env_args[@]}" "$PYTHON" -m realm_jax.main "${CONFIG_ARGS[@]}" \
      --config.index.spawn_embed_job=False
}

main() {
  parse_args "$@"
  check_args
  cd "$REPO"
  config_args
  echo "# node $NODE_RANK of $NUM_NODES; GPUs $GPUS: trainer $TRAIN_GPUS, embedding job $(
    if ((NODE_RANK == 0)); then echo "$EMBED_GPU_IDS"; else echo "on node 0"; fi)"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  if ((!SKIP_PREPARE)); then prepare; fi
  # One embedding job for the whole run, on node 0. The other nodes keep the
  # same GPU split so every trainer process has as many devices as the rest.
  if ((NODE_RANK == 0)); then start_embed; fi
  run_trainer
}

main "$@"
