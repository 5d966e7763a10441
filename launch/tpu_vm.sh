#!/usr/bin/env bash
# REALM pretraining on Cloud TPU VMs: the trainer on one slice, the embedding
# job (the index refresher) on a second slice, both on one shared workdir.
#
#   launch/tpu_vm.sh --project=P --zone=europe-west4-a --name=realm \
#       --workdir=gs://BUCKET/realm_ccnews [--train_type=v3-64] \
#       [--embed_type=v3-8] [--config=configs/pretrain_ccnews.py] \
#       [--dry-run] [--config.train.batch_size=512 ...]
#
# See launch/README.md, and --help for every option.
set -euo pipefail

PROG=tpu_vm.sh
case ${BASH_SOURCE[0]} in
  */*) LAUNCH_DIR=${BASH_SOURCE[0]%/*} ;;
  *) LAUNCH_DIR=. ;;
esac
LAUNCH_DIR=$(cd "$LAUNCH_DIR" && pwd)
REPO=${LAUNCH_DIR%/*}
# shellcheck source=launch/lib.sh
source "$LAUNCH_DIR/lib.sh"

ALL_STEPS="create,install,mount,prepare,embed,train"
# Where things live on every TPU VM worker. These go into remote command
# strings unquoted, so the worker's shell expands ~ to its own $HOME.
# shellcheck disable=SC2088
R_REPO='~/realm_jax'
# shellcheck disable=SC2088
R_VENV='~/realm_venv'
# shellcheck disable=SC2088
R_LOGS='~/realm_logs'
R_PY="$R_VENV/bin/python"
GCS_MOUNT_ROOT=/mnt/gcs
SCOPES=https://www.googleapis.com/auth/cloud-platform

usage() {
  cat <<'EOF'
Usage: launch/tpu_vm.sh --project=P --zone=Z --name=N --workdir=gs://B/PATH [options] [--config.a.b=v ...]

Creates two Cloud TPU VMs, N-train and N-embed, installs realm_jax on every
worker of both, mounts the shared workdir, builds the block store once, then
starts the embedding job (python -m realm_jax.main ... --config.task=embed) on
every worker of N-embed and the trainer (python -m realm_jax.main) on every
worker of N-train. Both run detached; logs are in ~/realm_logs/ on each
worker.

Required:
  --project=P          Google Cloud project
  --zone=Z             zone with both TPU types, e.g. europe-west4-a for v3
  --name=N             prefix of the two TPU VM names (N-train, N-embed)
  --workdir=W          gs://BUCKET/PATH: mounted with gcsfuse at
                       /mnt/gcs/BUCKET on every worker (the code needs POSIX
                       files); or an absolute path together with --shared_fs,
                       or on a run of one host (--embed_type=none, a
                       single-host --train_type)

Options:
  --train_type=T       trainer's accelerator type (default v3-64)
  --embed_type=T       embedding job's accelerator type (default v3-8), or
                       none: no second VM, for runs without an index (ICT)
  --config=F           config file, relative to the repository
                       (default configs/pretrain_ccnews.py)
  --version=V          TPU software version for both VMs (default by
                       generation: tpu-ubuntu2204-base for v2/v3/v4,
                       v2-alpha-tpuv5-lite, v2-alpha-tpuv5, v2-alpha-tpuv6e)
  --steps=S,...        what to do, in this order whatever order is given:
                       stop,create,install,mount,prepare,embed,train
                       (default create,install,mount,prepare,embed,train;
                       e.g. --steps=stop,install,embed,train to restart on
                       new code)
  --git=URL            install by cloning URL on the workers instead of
                       copying this checkout (git archive of the working tree)
  --git_ref=REF        commit, tag or branch to check out with --git
  --spot               create Spot TPU VMs
  --shared_fs          --workdir is a filesystem already mounted at that path
                       on every worker of both VMs (e.g. Filestore NFS)
  --dry-run            print every command, one per line after "+ ", and run
                       none (gcloud need not be installed)
  -h, --help           this text

The trainer, the embedding job and the data preparation all run with
--config and every --config.KEY=VALUE given here, so they agree on every
shared setting (index.*, data.block_store).
EOF
}

# ------------------------------------------------------------------ arguments

PROJECT="" ZONE="" NAME="" WORKDIR=""
TRAIN_TYPE=v3-64 EMBED_TYPE=v3-8
CONFIG=configs/pretrain_ccnews.py
VERSION="" STEPS=$ALL_STEPS STEPS_GIVEN=0 GIT_URL="" GIT_REF=""
SPOT=0 SHARED_FS=0
OVERRIDES=()

parse_args() {
  while (($#)); do
    case $1 in
      -h|--help) usage; exit 0 ;;
      --dry-run|--dry_run) DRY_RUN=1; shift ;;
      --spot) SPOT=1; shift ;;
      --shared_fs|--shared-fs) SHARED_FS=1; shift ;;
      --config.*=*) OVERRIDES+=("$1"); shift ;;
      --config.*) die "$1 needs a value: --config.KEY=VALUE" ;;
      --project|--project=*|--zone|--zone=*|--name|--name=*|--workdir|--workdir=*|\
      --train_type|--train_type=*|--embed_type|--embed_type=*|--config|--config=*|\
      --version|--version=*|--steps|--steps=*|--git|--git=*|--git_ref|--git_ref=*)
        read_value "$@"
        case ${1%%=*} in
          --project) PROJECT=$OPT_VALUE ;;
          --zone) ZONE=$OPT_VALUE ;;
          --name) NAME=$OPT_VALUE ;;
          --workdir) WORKDIR=$OPT_VALUE ;;
          --train_type) TRAIN_TYPE=$OPT_VALUE ;;
          --embed_type) EMBED_TYPE=$OPT_VALUE ;;
          --config) CONFIG=$OPT_VALUE ;;
          --version) VERSION=$OPT_VALUE ;;
          --steps) STEPS=$OPT_VALUE; STEPS_GIVEN=1 ;;
          --git) GIT_URL=$OPT_VALUE ;;
          --git_ref) GIT_REF=$OPT_VALUE ;;
        esac
        shift "$OPT_SHIFT" ;;
      *) die "unknown argument: $1" ;;
    esac
  done
}

# Checks an accelerator type; sets HOSTS to its number of TPU VM workers.
# v2-v5p name TensorCores (8 per host); v5e and v6e name chips (one host up
# to 8, then 4 per host).
check_accelerator() {
  local flag=$1 type=$2 gen size
  if [[ ! $type =~ ^(v2|v3|v4|v5p|v5litepod|v6e)-([1-9][0-9]*)$ ]]; then
    die "$flag=$type is not a Cloud TPU accelerator type (expected e.g. v3-64, v4-32, v5p-16, v5litepod-16, v6e-8)"
  fi
  gen=${BASH_REMATCH[1]} size=${BASH_REMATCH[2]}
  case $gen in
    v2|v3)
      local sizes="8 32 128 256 512"
      if [[ $gen == v3 ]]; then sizes="8 32 64 128 256 512 1024 2048"; fi
      if [[ " $sizes " != *" $size "* ]]; then
        die "$flag=$type: $gen slices have $sizes TensorCores (there is no $type; v3-8 is one host, v3-32 the smallest multi-host slice)"
      fi
      HOSTS=$((size / 8)) ;;
    v4|v5p)
      if ((size % 8)); then die "$flag=$type: $gen slices have a multiple of 8 TensorCores"; fi
      HOSTS=$((size / 8)) ;;
    v5litepod|v6e)
      if [[ " 1 4 8 16 32 64 128 256 " != *" $size "* ]]; then
        die "$flag=$type: $gen slices have 1, 4, 8, 16, ..., 256 chips"
      fi
      if ((size <= 8)); then HOSTS=1; else HOSTS=$((size / 4)); fi ;;
  esac
}

default_version() {
  case $1 in
    v5litepod-*) echo v2-alpha-tpuv5-lite ;;
    v5p-*) echo v2-alpha-tpuv5 ;;
    v6e-*) echo v2-alpha-tpuv6e ;;
    *) echo tpu-ubuntu2204-base ;;
  esac
}

has_step() {
  [[ ",$STEPS," == *",$1,"* ]]
}

check_args() {
  if [[ -z $PROJECT ]]; then die "--project is required"; fi
  if [[ -z $ZONE ]]; then die "--zone is required"; fi
  if [[ -z $NAME ]]; then die "--name is required"; fi
  if [[ -z $WORKDIR ]]; then die "--workdir is required (gs://BUCKET/PATH)"; fi
  if [[ ! $NAME =~ ^[a-z]([-a-z0-9]{0,40}[a-z0-9])?$ ]]; then
    die "--name=$NAME: use lowercase letters, digits and hyphens, starting with a letter (at most 42 characters: -train/-embed are appended)"
  fi
  if [[ ! $ZONE =~ ^[a-z]+-[a-z]+[0-9]+-[a-z]$ ]]; then
    die "--zone=$ZONE does not look like a zone (e.g. europe-west4-a)"
  fi

  local s
  for s in ${STEPS//,/ }; do
    if [[ ",stop,$ALL_STEPS," != *",$s,"* ]]; then
      die "--steps: unknown step '$s' (steps: stop,$ALL_STEPS)"
    fi
  done

  check_accelerator --train_type "$TRAIN_TYPE"; TRAIN_HOSTS=$HOSTS
  EMBED_HOSTS=0
  if [[ $EMBED_TYPE == none ]]; then
    # No embedding slice: for runs that need no index (ICT).
    if ((STEPS_GIVEN)) && has_step embed; then
      die "--steps includes embed, but --embed_type=none"
    fi
  else
    check_accelerator --embed_type "$EMBED_TYPE"; EMBED_HOSTS=$HOSTS
  fi

  # Both slices read and write one workdir: exports, index versions and
  # checkpoints go through files. The code uses POSIX files (renames, memory
  # maps), so a bucket is mounted with gcsfuse at the same path everywhere.
  BUCKET=""
  if [[ $WORKDIR == gs://* ]]; then
    if [[ ! $WORKDIR =~ ^gs://([a-z0-9][-a-z0-9_.]{1,220}[a-z0-9])(/.*)?$ ]]; then
      die "--workdir=$WORKDIR is not a gs://BUCKET[/PATH] URL"
    fi
    BUCKET=${BASH_REMATCH[1]}
    local path=${BASH_REMATCH[2]#/}
    path=${path%/}
    R_WORKDIR=$GCS_MOUNT_ROOT/$BUCKET${path:+/$path}
  elif ((SHARED_FS || TRAIN_HOSTS + EMBED_HOSTS == 1)); then
    if [[ $WORKDIR != /* ]]; then
      die "--workdir=$WORKDIR: give an absolute path on the TPU VM(s)"
    fi
    R_WORKDIR=$WORKDIR
  else
    die "--workdir=$WORKDIR is not a gs:// URL, but the run uses $((TRAIN_HOSTS + EMBED_HOSTS)) hosts ($TRAIN_HOSTS for $TRAIN_TYPE, $EMBED_HOSTS for --embed_type=$EMBED_TYPE), which must all see one workdir: use --workdir=gs://BUCKET/PATH, or add --shared_fs if $WORKDIR is mounted on every worker"
  fi

  case $CONFIG in
    "$REPO"/*) CONFIG=${CONFIG#"$REPO"/} ;;
    /*) die "--config=$CONFIG must be inside the repository (the workers run the copy installed from it)" ;;
  esac
  if [[ -z $GIT_URL && ! -f $REPO/$CONFIG ]]; then
    die "--config=$CONFIG: no such file in $REPO"
  fi
  if [[ -z $GIT_URL && ! -e $REPO/.git ]]; then
    die "$REPO is not a git checkout, so its code cannot be packed for the workers: use --git=URL"
  fi
  if [[ -n $GIT_REF && -z $GIT_URL ]]; then die "--git_ref needs --git"; fi
  check_overrides

  if ((EMBED_HOSTS > 1)) && has_step embed; then
    # The embedding job's watch loop lets every process choose the newest
    # export by itself and returns on processes > 0 before process 0
    # commits; those processes can then start on a different (or the
    # just-built) version than process 0, and the job stalls at its next
    # barrier.
    warn "--embed_type=$EMBED_TYPE has $EMBED_HOSTS hosts, but the embedding job (task=embed) does not yet agree on one export across processes; a single-host embed slice (e.g. v3-8) is the safe choice"
  fi
  if ((!DRY_RUN)) && ! command -v gcloud >/dev/null 2>&1; then
    die "gcloud not found: install the Google Cloud CLI (or use --dry-run to see the commands)"
  fi
}

# ------------------------------------------------------------------ commands

TRAIN_VM="" EMBED_VM=""
VMS=()  # the VMs of this run: the trainer's, then the embedding job's
SRC_TGZ=""

tpu() {  # tpu VERB ARG: one gcloud TPU VM call on a VM (or file), then flags
  local verb=$1 arg=$2
  shift 2
  run gcloud compute tpus tpu-vm "$verb" "$arg" --project="$PROJECT" --zone="$ZONE" "$@"
}

on_workers() {  # on_workers VM WORKER COMMAND: one shell command over ssh
  tpu ssh "$1" --worker="$2" --command "$3"
}

create_vms() {
  local vm type
  for vm in "${VMS[@]}"; do
    type=$TRAIN_TYPE
    if [[ $vm == "$EMBED_VM" ]]; then type=$EMBED_TYPE; fi
    local extra=()
    if ((SPOT)); then extra+=(--spot); fi
    tpu create "$vm" --accelerator-type="$type" \
        --version="${VERSION:-$(default_version "$type")}" \
        --scopes="$SCOPES" ${extra[@]+"${extra[@]}"}
  done
}

# The workers need the whole source tree, not just the package: the config
# files (configs/) and launch/prepare_data.py live outside realm_jax/. The
# default copies this checkout: `git stash create` makes a commit of the
# working tree's tracked files (uncommitted edits included, nothing changed
# here) and `git archive` packs it; untracked files are not sent (git add
# them). --git clones a repository on the workers instead.
install() {
  local fetch vm
  if [[ -n $GIT_URL ]]; then
    fetch="rm -rf $R_REPO && git clone -q $(shell_quote "$GIT_URL") $R_REPO"
    if [[ -n $GIT_REF ]]; then
      fetch+=" && git -C $R_REPO checkout -q $(shell_quote "$GIT_REF")"
    fi
  else
    run_shell "rev=\$(git -C $(shell_quote "$REPO") stash create); git -C $(shell_quote "$REPO") archive --format=tar.gz -o $(shell_quote "$SRC_TGZ") \"\${rev:-HEAD}\""
    fetch="rm -rf $R_REPO && mkdir -p $R_REPO && tar -xzf ~/realm_jax_src.tgz -C $R_REPO"
  fi
  # A venv keeps the image's system Python untouched; python3-venv is not on
  # every image. jax[tpu] brings libtpu from PyPI.
  local venv="if [ ! -x $R_VENV/bin/pip ]; then rm -rf $R_VENV; python3 -m venv $R_VENV 2>/dev/null || { sudo apt-get update -qq && sudo apt-get install -y -qq python3-venv && python3 -m venv $R_VENV; }; fi"
  local pip="$R_VENV/bin/pip install -q --upgrade pip && cd $R_REPO && $R_VENV/bin/pip install -q -e '.[tpu]'"
  for vm in "${VMS[@]}"; do
    if [[ -z $GIT_URL ]]; then
      run gcloud compute tpus tpu-vm scp "$SRC_TGZ" "$vm:realm_jax_src.tgz" \
          --project="$PROJECT" --zone="$ZONE" --worker=all
    fi
    on_workers "$vm" all "set -e; $fetch; $venv; $pip"
  done
}

# gcsfuse with --rename-dir-limit lets the code's directory renames (index
# and export commits) work on a flat bucket, one object at a time; on a
# bucket with hierarchical namespace they are atomic, as on a local disk.
mount_workdir() {
  local vm cmd q_mount q_workdir
  q_mount=$(shell_quote "$GCS_MOUNT_ROOT/$BUCKET")
  q_workdir=$(shell_quote "$R_WORKDIR")
  if [[ -z $BUCKET ]]; then  # --shared_fs: mounted already
    cmd="mkdir -p $q_workdir"
  else
    cmd="set -e; if ! command -v gcsfuse >/dev/null; then"
    cmd+=" curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null;"
    cmd+=" echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -cs) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null;"
    cmd+=" sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse; fi;"
    cmd+=" sudo mkdir -p $q_mount && sudo chown \"\$(id -u):\$(id -g)\" $q_mount;"
    cmd+=" mountpoint -q $q_mount || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(shell_quote "$BUCKET") $q_mount;"
    cmd+=" mkdir -p $q_workdir"
  fi
  for vm in "${VMS[@]}"; do
    on_workers "$vm" all "$cmd"
  done
}

# Trainer, embedding job and data preparation see the same config and
# overrides.
config_args() {
  quote_words --config="$CONFIG" --config.workdir="$R_WORKDIR" \
      ${OVERRIDES[@]+"${OVERRIDES[@]}"}
}

# Built once, on worker 0, on its CPU, before any job starts (see
# launch/prepare_data.py): otherwise every trainer host would build the same
# block store at once, and the embedding job would find none.
prepare() {
  on_workers "$TRAIN_VM" 0 \
      "cd $R_REPO && JAX_PLATFORMS=cpu $R_PY launch/prepare_data.py $(config_args)"
}

# start_job JOB ARGS: a detached process on every worker; its pid goes to
# ~/realm_logs/JOB.pid so that `--steps=stop` can end exactly it.
start_job() {
  local job=$1 args=$2
  local pidf="$R_LOGS/$job.pid"
  printf '%s' "set -e; cd $R_REPO; mkdir -p $R_LOGS;"
  printf '%s' " if [ -f $pidf ] && kill -0 \"\$(cat $pidf)\" 2>/dev/null; then echo \"$job already running on \$(hostname): pid \$(cat $pidf)\" >&2; exit 1; fi;"
  printf '%s' " nohup $R_PY $args > $R_LOGS/$job.log 2>&1 < /dev/null & echo \$! > $pidf"
}

# The trainer's config and overrides, as task=embed.
start_embed() {
  on_workers "$EMBED_VM" all \
      "$(start_job embed "-m realm_jax.main $(config_args) --config.task=embed")"
}

start_trainer() {
  local args
  args="-m realm_jax.main $(config_args) --config.index.spawn_embed_job=False"
  on_workers "$TRAIN_VM" all "$(start_job train "$args")"
}

stop_jobs() {
  local vm job cmd=""
  for job in train embed; do
    local pidf="$R_LOGS/$job.pid"
    cmd+="if [ -f $pidf ]; then kill \"\$(cat $pidf)\" 2>/dev/null || true; rm -f $pidf; fi; "
  done
  for vm in "${VMS[@]}"; do
    on_workers "$vm" all "${cmd%; }"
  done
}

main() {
  parse_args "$@"
  check_args
  TRAIN_VM=$NAME-train
  VMS=("$TRAIN_VM")
  if [[ $EMBED_TYPE != none ]]; then
    EMBED_VM=$NAME-embed
    VMS+=("$EMBED_VM")
  fi
  SRC_TGZ=${TMPDIR:-/tmp}/realm_jax_src-$NAME.tgz

  echo "# trainer: $TRAIN_VM ($TRAIN_TYPE, $TRAIN_HOSTS host(s)); embedding job: ${EMBED_VM:-none}${EMBED_VM:+ ($EMBED_TYPE, $EMBED_HOSTS host(s))}"
  echo "# workdir: $WORKDIR, at $R_WORKDIR on every worker; config: $CONFIG"
  if has_step stop; then stop_jobs; fi
  if has_step create; then create_vms; fi
  if has_step install; then install; fi
  if has_step mount; then mount_workdir; fi
  if has_step prepare; then prepare; fi
  if has_step embed && [[ -n $EMBED_VM ]]; then start_embed; fi
  if has_step train; then start_trainer; fi
  echo "# logs: gcloud compute tpus tpu-vm ssh $TRAIN_VM --project=$PROJECT --zone=$ZONE --worker=0 --command='tail -f $R_LOGS/train.log'"
  if [[ -n $EMBED_VM ]]; then echo "#       (and $EMBED_VM for $R_LOGS/embed.log)"; fi
  echo "# stop the jobs with --steps=stop; delete the VMs with gcloud compute tpus tpu-vm delete"
}

main "$@"
