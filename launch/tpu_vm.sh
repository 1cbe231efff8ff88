#!/usr/bin/env bash
# Fine-tunes on a Cloud TPU VM slice: creates the TPU VM (or a queued resource)
# unless it exists, installs fam-jax on every worker, and starts the trainer on
# every worker (each worker is one JAX process; JAX finds the slice itself).
#
#   launch/tpu_vm.sh --name fam-1b --zone us-east5-a --accelerator_type v5p-32 \
#       --bucket gs://my-bucket --trainer t5x \
#       --gin_file gin_configs/t5x/fam_1b_finetune.gin
#
# --dry-run prints each command it would run, shell-quoted, one a line (as if
# the TPU VM did not exist yet), and runs nothing.
set -euo pipefail

PROG=launch/tpu_vm.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
T5X_GIT="git+https://github.com/google-research/t5x git+https://github.com/google/airio git+https://github.com/google-research/jestimator"
REMOTE_DIR=fam-jax  # the checkout on each worker, under its home directory

usage() {
  cat <<EOF
usage: $PROG --name NAME --zone ZONE --accelerator_type TYPE --gin_file FILE
       (--bucket gs://BUCKET | --model_dir gs://...) [options] [-- trainer args...]

  --name NAME              the TPU VM (and queued resource) name
  --zone ZONE              e.g. us-east5-a (v5p), us-east1-d (v6e)
  --accelerator_type TYPE  e.g. v5p-32, v6e-16, v4-8
  --runtime_version V      TPU software version (default: by TPU generation,
                           v2-alpha-tpuv5 for v5p, v2-alpha-tpuv6e for v6e,
                           v2-alpha-tpuv5-lite for v5litepod, tpu-ubuntu2204-base)
  --project P              gcloud project (default: gcloud's)
  --queued                 create through a queued resource and wait until it
                           is ACTIVE (capacity that is not free right now)
  --spot                   spot capacity (with --queued) / preemptible
  --bucket gs://BUCKET     the default --model_dir is gs://BUCKET/fam-jax/NAME
  --model_dir DIR          run directory, on GCS (every worker writes to it)
  --gin_file FILE          the run's gin, relative to the checkout (repeatable)
  --trainer fam|t5x        fam-train (default) or t5x.train
  --repo REPO              a git URL to clone on each worker, or a local
                           checkout to copy (default: this one, $REPO)
  --branch B               with a git URL: the branch or tag to check out
  --detach                 train under nohup (log: ~/$REMOTE_DIR/train.log) and
                           return; without it the script waits for the run
  --dry-run                print the commands, run nothing
  -- ARGS...               passed to the trainer unchanged (e.g. --gin.X=Y)
EOF
}

# die, quote, join_quoted, need_value
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

name="" zone="" accelerator_type="" runtime_version="" project="" queued=0
spot=0 bucket="" model_dir="" gin_files=() trainer=fam repo="$REPO" branch=""
detach=0 dry_run=0 extra=()

while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then  # --flag=value -> --flag value
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    -h|--help) usage; exit 0 ;;
    --name) need_value "$@"; name=$2; shift 2 ;;
    --zone) need_value "$@"; zone=$2; shift 2 ;;
    --accelerator_type) need_value "$@"; accelerator_type=$2; shift 2 ;;
    --runtime_version) need_value "$@"; runtime_version=$2; shift 2 ;;
    --project) need_value "$@"; project=$2; shift 2 ;;
    --queued) queued=1; shift ;;
    --spot) spot=1; shift ;;
    --bucket) need_value "$@"; bucket=$2; shift 2 ;;
    --model_dir) need_value "$@"; model_dir=$2; shift 2 ;;
    --gin_file) need_value "$@"; gin_files+=("$2"); shift 2 ;;
    --trainer) need_value "$@"; trainer=$2; shift 2 ;;
    --repo) need_value "$@"; repo=$2; shift 2 ;;
    --branch) need_value "$@"; branch=$2; shift 2 ;;
    --detach) detach=1; shift ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown flag '$arg' (trainer flags go after --)" ;;
  esac
done

[[ -n $name ]] || die "--name is required"
[[ $name =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]] \
  || die "--name must be lower-case letters, digits and '-', starting with a letter; got '$name'"
[[ -n $zone ]] || die "--zone is required (e.g. us-east5-a)"
[[ -n $accelerator_type ]] || die "--accelerator_type is required (e.g. v5p-32, v6e-16)"
[[ $accelerator_type =~ ^(v[0-9]+[a-z]*|v5litepod)-[0-9]+$ ]] \
  || die "--accelerator_type must look like v5p-32, v6e-16, v4-8 or v5litepod-16; got '$accelerator_type'"
case $trainer in
  fam|t5x) ;;
  *) die "--trainer must be one of: fam, t5x; got '$trainer'" ;;
esac
[[ ${#gin_files[@]} -gt 0 ]] || die "--gin_file is required"
if [[ -z $model_dir ]]; then
  [[ -n $bucket ]] || die "give --bucket gs://BUCKET or --model_dir gs://...: every worker writes the run there"
  [[ $bucket == gs://* ]] || die "--bucket must start with gs://; got '$bucket'"
  model_dir="${bucket%/}/fam-jax/$name"
fi
[[ $model_dir == gs://* ]] \
  || die "--model_dir must be on GCS (gs://...), which every worker can write; got '$model_dir'"
if [[ -z $runtime_version ]]; then
  case $accelerator_type in
    v5p-*) runtime_version=v2-alpha-tpuv5 ;;
    v6e-*) runtime_version=v2-alpha-tpuv6e ;;
    v5litepod-*) runtime_version=v2-alpha-tpuv5-lite ;;
    *) runtime_version=tpu-ubuntu2204-base ;;
  esac
fi
local_repo=0
if [[ -d $repo ]]; then
  local_repo=1
  repo=$(cd "$repo" && pwd)
  [[ -z $branch ]] || die "--branch is for a git URL --repo; a local --repo is copied as committed (HEAD)"
elif [[ ! $repo =~ ^(https://|git@|ssh://) ]]; then
  die "--repo must be a git URL (https://, git@, ssh://) or an existing directory; got '$repo'"
fi

where=("--zone=$zone")
[[ -z $project ]] || where+=("--project=$project")

run() {  # prints or runs one command
  if [[ $dry_run -eq 1 ]]; then
    join_quoted "$@"
    echo
  else
    echo "+ $(join_quoted "$@")" >&2
    "$@"
  fi
}

on_workers() {  # runs a shell command on every worker of the slice
  run gcloud compute tpus tpu-vm ssh "$name" "${where[@]}" --worker=all \
    "--command=$1"
}

# 1. The TPU VM: reused when it exists.
exists=0
if [[ $dry_run -eq 0 ]] && gcloud compute tpus tpu-vm describe "$name" \
    "${where[@]}" --format='value(state)' >/dev/null 2>&1; then
  exists=1
  echo "$PROG: reusing the TPU VM $name" >&2
fi
if [[ $exists -eq 0 ]]; then
  if [[ $queued -eq 1 ]]; then
    create=(gcloud compute tpus queued-resources create "$name" "${where[@]}"
            "--node-id=$name" "--accelerator-type=$accelerator_type"
            "--runtime-version=$runtime_version")
    [[ $spot -eq 0 ]] || create+=(--spot)
    run "${create[@]}"
    wait_line="until [ \"\$(gcloud compute tpus queued-resources describe $(quote "$name") $(join_quoted "${where[@]}") --format='value(state.state)')\" = ACTIVE ]; do sleep 60; done"
    run bash -c "$wait_line"
  else
    create=(gcloud compute tpus tpu-vm create "$name" "${where[@]}"
            "--accelerator-type=$accelerator_type" "--version=$runtime_version")
    [[ $spot -eq 0 ]] || create+=(--preemptible)
    run "${create[@]}"
  fi
fi

# 2. The code on every worker.
if [[ $local_repo -eq 1 ]]; then
  tarball="/tmp/fam-jax-$name.tar.gz"
  run git -C "$repo" archive --format=tar.gz "--output=$tarball" HEAD
  run gcloud compute tpus tpu-vm scp "$tarball" "$name:fam-jax.tar.gz" \
    "${where[@]}" --worker=all
  fetch="rm -rf $REMOTE_DIR && mkdir -p $REMOTE_DIR && tar -xzf fam-jax.tar.gz -C $REMOTE_DIR"
else
  fetch="rm -rf $REMOTE_DIR && git clone --depth=1"
  [[ -z $branch ]] || fetch+=" --branch=$(quote "$branch")"
  fetch+=" $(quote "$repo") $REMOTE_DIR"
fi
install="$fetch && cd $REMOTE_DIR && python3 -m pip install -q -U pip"
install+=" && python3 -m pip install -q -e '.[train]' 'jax[tpu]'"
if [[ $trainer == t5x ]]; then
  install+=" && python3 -m pip install -q --no-deps $T5X_GIT"
  install+=" && python3 -m pip install -q -e '.[t5x]'"
fi
on_workers "set -e; $install"

# 3. The run: the same command on every worker.
cmd=(python3 -m)
if [[ $trainer == fam ]]; then
  cmd+=(fam_jax.cli.train --multihost)
  for gin in "${gin_files[@]}"; do cmd+=("--gin_file=$gin"); done
  cmd+=("--model_dir=$model_dir")
else
  cmd+=(t5x.train)
  for gin in "${gin_files[@]}"; do cmd+=("--gin_file=$gin"); done
  cmd+=("--gin.MODEL_DIR=\"$model_dir\"")
fi
cmd+=("${extra[@]}")
train="cd $REMOTE_DIR && $(join_quoted "${cmd[@]}")"
if [[ $detach -eq 1 ]]; then
  train="cd $REMOTE_DIR && nohup $(join_quoted "${cmd[@]}") > train.log 2>&1 < /dev/null &"
fi
on_workers "$train"
