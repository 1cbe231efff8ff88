#!/usr/bin/env bash
# Starts a multi-process fam-jax training run on GPU hosts (or CPU processes):
# one process per host (or per GPU subset), all joined by jax.distributed.
#
#   launch/gpu.sh --local 2 --cpu_devices 4 --gin_file=train/tiny_passkey.gin \
#       --model_dir=/tmp/run                       # 2 processes on this machine
#   launch/gpu.sh --hosts h1,h2 --gin_file=... --model_dir=/shared/run  # ssh
#   srun --ntasks-per-node=1 launch/gpu.sh --slurm --gin_file=... --model_dir=...
#   launch/gpu.sh --slurm ...     # in an sbatch script: runs the srun above
#
# Every process gets the coordinator address (the first host), the process
# count and its process id: as fam-train's --coordinator_address/--num_processes
# /--process_id, or as t5x.train's --multiprocess_gpu --coordinator_address
# --process_count --process_index. --dry-run prints each command, shell-quoted,
# one a line, and runs nothing. The script waits for every process, stops the
# others when one fails, exits non-zero if any failed, and passes SIGTERM and
# SIGINT on to the processes as SIGTERM (fam-train saves a checkpoint, stops).
set -euo pipefail

PROG=launch/gpu.sh
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

usage() {
  cat <<EOF
usage: $PROG (--local N | --hosts H1,H2,... | --slurm) --gin_file=FILE
       --model_dir=DIR [options] [-- trainer args...]

where the processes run (exactly one):
  --local N             N processes on this machine, coordinator localhost
  --hosts H1,H2,...     one process per host over ssh, coordinator the first
  --slurm               one process per SLURM task (SLURM_PROCID/SLURM_NTASKS,
                        coordinator the first node of SLURM_JOB_NODELIST);
                        outside a job step it runs srun over the allocation
options:
  --trainer fam|t5x     fam-train (default) or t5x.train
  --gin_file FILE       the run's gin (repeatable)
  --model_dir DIR       run directory (t5x: --gin.MODEL_DIR), the same for all
  --port P              coordinator port (default 12355)
  --python PY           the Python that runs the trainer (default python3)
  --cpu_devices K       --local: each process is a CPU process with K devices
                        (added to XLA_FLAGS)
  --gpus_per_process G  --local: process i sees GPUs i*G .. i*G+G-1
  --remote_dir DIR      --hosts: the checkout on every host (default: $REPO)
  --log_dir DIR         each process's output to DIR/process_<i>.log
  --dry-run             print the commands, run nothing
  -- ARGS...            passed to the trainer unchanged (e.g. --gin.X=Y)
EOF
}

# die, quote, join_quoted, need_value
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

positive_int() {
  [[ $2 =~ ^[1-9][0-9]*$ ]] || die "$1 must be a positive integer; got '$2'"
}

# The first host of a SLURM node list: 'gpu[03-04,07],cpu1' -> 'gpu03'.
first_slurm_host() {
  local list=$1
  if command -v scontrol >/dev/null 2>&1; then
    scontrol show hostnames "$list" | head -n 1
    return
  fi
  local head=${list%%,*}
  if [[ $list =~ ^([^,\[]*)\[([^],-]+) ]]; then
    head="${BASH_REMATCH[1]}${BASH_REMATCH[2]}"
  fi
  printf '%s\n' "$head"
}

mode="" local_n="" hosts="" trainer=fam port=12355 python=python3
cpu_devices="" gpus_per_process="" remote_dir="$REPO" log_dir="" dry_run=0
gin_files=() model_dir="" extra=()
original_args=("$@")

while [[ $# -gt 0 ]]; do
  arg=$1
  if [[ $arg == --*=* ]]; then  # --flag=value -> --flag value
    set -- "${arg%%=*}" "${arg#*=}" "${@:2}"
    arg=$1
  fi
  case $arg in
    -h|--help) usage; exit 0 ;;
    --local) need_value "$@"; [[ -z $mode ]] || die "give one of --local, --hosts, --slurm"
      mode=local; local_n=$2; shift 2 ;;
    --hosts) need_value "$@"; [[ -z $mode ]] || die "give one of --local, --hosts, --slurm"
      mode=hosts; hosts=$2; shift 2 ;;
    --slurm) [[ -z $mode ]] || die "give one of --local, --hosts, --slurm"
      mode=slurm; shift ;;
    --trainer) need_value "$@"; trainer=$2; shift 2 ;;
    --gin_file) need_value "$@"; gin_files+=("$2"); shift 2 ;;
    --model_dir) need_value "$@"; model_dir=$2; shift 2 ;;
    --port) need_value "$@"; port=$2; shift 2 ;;
    --python) need_value "$@"; python=$2; shift 2 ;;
    --cpu_devices) need_value "$@"; cpu_devices=$2; shift 2 ;;
    --gpus_per_process) need_value "$@"; gpus_per_process=$2; shift 2 ;;
    --remote_dir) need_value "$@"; remote_dir=$2; shift 2 ;;
    --log_dir) need_value "$@"; log_dir=$2; shift 2 ;;
    --dry-run|--dry_run) dry_run=1; shift ;;
    --) shift; extra=("$@"); break ;;
    *) die "unknown flag '$arg' (trainer flags go after --)" ;;
  esac
done

[[ -n $mode ]] || die "say where the processes run: --local N, --hosts H1,H2,... or --slurm"
case $trainer in
  fam|t5x) ;;
  *) die "--trainer must be one of: fam, t5x; got '$trainer'" ;;
esac
[[ ${#gin_files[@]} -gt 0 ]] || die "--gin_file is required"
[[ -n $model_dir ]] || die "--model_dir is required"
positive_int --port "$port"
[[ -z $cpu_devices ]] || positive_int --cpu_devices "$cpu_devices"
[[ -z $gpus_per_process ]] || positive_int --gpus_per_process "$gpus_per_process"
if [[ $mode != local && -n $cpu_devices$gpus_per_process ]]; then
  die "--cpu_devices and --gpus_per_process are for --local"
fi
if [[ -n $cpu_devices && -n $gpus_per_process ]]; then
  die "give --cpu_devices or --gpus_per_process, not both"
fi

# The trainer's command for process `id` of `count`, coordinator `address`.
trainer_command() {
  local id=$1 count=$2 address=$3 gin
  cmd=("$python" -m)
  if [[ $trainer == fam ]]; then
    cmd+=(fam_jax.cli.train)
    for gin in "${gin_files[@]}"; do cmd+=("--gin_file=$gin"); done
    cmd+=("--model_dir=$model_dir" "--coordinator_address=$address"
          "--num_processes=$count" "--process_id=$id")
  else
    cmd+=(t5x.train)
    for gin in "${gin_files[@]}"; do cmd+=("--gin_file=$gin"); done
    cmd+=("--gin.MODEL_DIR=\"$model_dir\"" --multiprocess_gpu
          "--coordinator_address=$address" "--process_count=$count"
          "--process_index=$id")
  fi
  cmd+=("${extra[@]}")
}

# Processes this script started, their ids, and what ended them.
pids=()
declare -A process_of=()
status=0
forwarded=""

forward() {
  forwarded=$1
  local pid
  for pid in "${pids[@]}"; do
    kill -s "$1" "$pid" 2>/dev/null || true
  done
}

start() {  # start ID COMMAND...: runs the command in the background
  local id=$1
  shift
  if [[ -n $log_dir ]]; then
    "$@" >"$log_dir/process_$id.log" 2>&1 &
  else
    "$@" &
  fi
  pids+=("$!")
  process_of[$!]=$id
  # A signal that arrived between the fork and the line above was forwarded
  # without this process: send it now.
  [[ -z $forwarded ]] || kill -s "$forwarded" "$!" 2>/dev/null || true
}

wait_all() {
  local remaining=${#pids[@]} done_pid rc pid
  while [[ $remaining -gt 0 ]]; do
    done_pid=""
    if wait -n -p done_pid; then rc=0; else rc=$?; fi
    [[ -n ${done_pid:-} ]] || continue  # a signal arrived (forwarded by the trap)
    remaining=$((remaining - 1))
    if [[ $rc -ne 0 && $status -eq 0 ]]; then
      status=$rc
      echo "$PROG: process ${process_of[$done_pid]} exited with status $rc" >&2
      if [[ -z $forwarded ]]; then
        echo "$PROG: stopping the other processes" >&2
        for pid in "${pids[@]}"; do
          [[ $pid == "$done_pid" ]] || kill -s TERM "$pid" 2>/dev/null || true
        done
      fi
    fi
  done
  return "$status"
}

run_processes() {  # the commands in `commands` (one quoted line each)
  if [[ $dry_run -eq 1 ]]; then
    printf '%s\n' "${lines[@]}"
    return 0
  fi
  [[ -z $log_dir ]] || mkdir -p "$log_dir"
  # SIGINT too becomes SIGTERM: processes started in the background of a
  # script ignore SIGINT (a Python then has no KeyboardInterrupt handler).
  trap 'forward TERM' TERM INT
  local i
  for i in "${!commands[@]}"; do
    [[ -z $forwarded ]] || break  # stopped while starting: start no more
    eval "local -a argv=(${commands[$i]})"
    # shellcheck disable=SC2154  # argv is set by the eval above
    start "$i" "${argv[@]}"
  done
  wait_all
}

commands=() lines=()
case $mode in
  local)
    positive_int --local "$local_n"
    if [[ $local_n -gt 1 && -z $cpu_devices$gpus_per_process ]]; then
      die "--local $local_n needs --cpu_devices K or --gpus_per_process G (each process its own devices)"
    fi
    for ((i = 0; i < local_n; i++)); do
      trainer_command "$i" "$local_n" "localhost:$port"
      env_vars=()
      if [[ -n $cpu_devices ]]; then
        # Added to the XLA_FLAGS this script was given, if any.
        env_vars=(JAX_PLATFORMS=cpu "XLA_FLAGS=${XLA_FLAGS:+$XLA_FLAGS }--xla_force_host_platform_device_count=$cpu_devices")
      elif [[ -n $gpus_per_process ]]; then
        gpus=$(seq -s, $((i * gpus_per_process)) $(((i + 1) * gpus_per_process - 1)))
        env_vars=("CUDA_VISIBLE_DEVICES=$gpus")
      fi
      line=$(join_quoted env "${env_vars[@]}" "${cmd[@]}")
      [[ ${#env_vars[@]} -gt 0 ]] || line=$(join_quoted "${cmd[@]}")
      commands+=("$line")
      lines+=("$line")
    done
    run_processes
    ;;
  hosts)
    IFS=, read -r -a host_list <<<"$hosts"
    [[ ${#host_list[@]} -gt 0 ]] || die "--hosts needs at least one host"
    for h in "${host_list[@]}"; do
      [[ -n $h ]] || die "--hosts has an empty host name: '$hosts'"
    done
    for i in "${!host_list[@]}"; do
      trainer_command "$i" "${#host_list[@]}" "${host_list[0]}:$port"
      # On the host: the trainer in the background, SIGHUP (ssh closed: this
      # script stopped it) and SIGTERM/SIGINT become SIGTERM for the trainer.
      # The trainer starts with SIGHUP ignored, so that only the SIGTERM reaches it.
      remote="cd $(quote "$remote_dir") && { trap '' HUP; $(join_quoted "${cmd[@]}") &"
      remote+=" pid=\$!; trap 'kill -TERM \$pid' HUP TERM INT; wait \$pid; wait \$pid; }"
      line=$(join_quoted ssh -tt "${host_list[$i]}" "$remote")
      commands+=("$line")
      lines+=("$line")
    done
    run_processes
    ;;
  slurm)
    if [[ -n ${SLURM_PROCID:-} && -n ${SLURM_STEP_ID:-} ]]; then
      # One task of the job step: this process.
      nodelist=${SLURM_STEP_NODELIST:-${SLURM_JOB_NODELIST:-}}
      [[ -n $nodelist ]] || die "--slurm: SLURM_JOB_NODELIST is not set"
      [[ -n ${SLURM_NTASKS:-} ]] || die "--slurm: SLURM_NTASKS is not set"
      trainer_command "$SLURM_PROCID" "$SLURM_NTASKS" \
        "$(first_slurm_host "$nodelist"):$port"
      if [[ $dry_run -eq 1 ]]; then
        join_quoted "${cmd[@]}"
        echo
        exit 0
      fi
      exec "${cmd[@]}"
    fi
    # In the batch script (or salloc): one task per node over the allocation.
    [[ -n ${SLURM_JOB_NODELIST:-} && -n ${SLURM_JOB_NUM_NODES:-} ]] \
      || die "--slurm runs inside a SLURM allocation (sbatch/salloc): SLURM_JOB_NODELIST and SLURM_JOB_NUM_NODES are not set"
    nodes=$SLURM_JOB_NUM_NODES
    task_args=()  # this script's arguments but --dry-run
    for ((i = 0; i < ${#original_args[@]}; i++)); do
      arg=${original_args[$i]}
      if [[ $arg == -- ]]; then
        task_args+=("${original_args[@]:$i}")
        break
      fi
      [[ $arg == --dry-run || $arg == --dry_run ]] || task_args+=("$arg")
    done
    line=$(join_quoted srun "--nodes=$nodes" "--ntasks=$nodes" \
      --ntasks-per-node=1 --kill-on-bad-exit=1 "$REPO/launch/gpu.sh" \
      "${task_args[@]}")
    if [[ $dry_run -eq 1 ]]; then
      # srun runs this line; each task then runs its trainer command (comments).
      echo "$line"
      coordinator="$(first_slurm_host "$SLURM_JOB_NODELIST"):$port"
      for ((i = 0; i < nodes; i++)); do
        trainer_command "$i" "$nodes" "$coordinator"
        echo "# task $i: $(join_quoted "${cmd[@]}")"
      done
      exit 0
    fi
    commands=("$line")
    run_processes
    ;;
esac
