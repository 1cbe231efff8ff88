"""launch/gpu.sh and launch/tpu_vm.sh: the commands their --dry-run prints, their
flag errors, and a real 2-process jax.distributed run of fam-train on localhost
(2 processes × 4 CPU devices) that trains as 1 process × 8 devices does."""

import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import jax
import pytest

from fam_jax import checkpoint
from util import rel_err

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPU = os.path.join(REPO, "launch", "gpu.sh")
TPU = os.path.join(REPO, "launch", "tpu_vm.sh")


def launch(script, *args, env=None):
  env = dict(os.environ, XLA_FLAGS="", **(env or {}))
  return subprocess.run([script, *args], capture_output=True, text=True,
                        cwd=REPO, env=env, timeout=60)


def dry_run(script, *args, env=None):
  result = launch(script, "--dry-run", *args, env=env)
  assert result.returncode == 0, result.stderr
  return result.stdout.splitlines()


# --- launch/gpu.sh ---------------------------------------------------------

def test_gpu_local_dry_run():
  lines = dry_run(GPU, "--local", "2", "--cpu_devices", "4",
                  "--gin_file=train/tiny_passkey.gin", "--model_dir", "/runs/a",
                  "--port", "9999", "--", "--gin.TrainConfig.train_steps=3",
                  "--gin.TrainConfig.finetune='full'")
  assert lines == [shlex.join([
      "env", "JAX_PLATFORMS=cpu",
      "XLA_FLAGS=--xla_force_host_platform_device_count=4",
      "python3", "-m", "fam_jax.cli.train", "--gin_file=train/tiny_passkey.gin",
      "--model_dir=/runs/a", "--coordinator_address=localhost:9999",
      "--num_processes=2", f"--process_id={i}",
      "--gin.TrainConfig.train_steps=3", "--gin.TrainConfig.finetune='full'"])
      for i in range(2)]


def test_gpu_local_gpu_subsets_dry_run():
  lines = dry_run(GPU, "--local", "2", "--gpus_per_process", "4",
                  "--gin_file=g.gin", "--model_dir=/m")
  assert [shlex.split(line)[1] for line in lines] == [
      "CUDA_VISIBLE_DEVICES=0,1,2,3", "CUDA_VISIBLE_DEVICES=4,5,6,7"]


def test_gpu_hosts_t5x_dry_run():
  lines = dry_run(GPU, "--hosts", "h1,h2,h3", "--trainer", "t5x",
                  "--gin_file", "gin_configs/t5x/fam_1b_finetune.gin",
                  "--model_dir", "/shared/run", "--remote_dir", "/src/fam-jax",
                  "--python", "/venv/bin/python")
  assert len(lines) == 3
  for i, line in enumerate(lines):
    ssh, tt, host, remote = shlex.split(line)
    assert (ssh, tt, host) == ("ssh", "-tt", f"h{i + 1}")
    trainer = shlex.join([
        "/venv/bin/python", "-m", "t5x.train",
        "--gin_file=gin_configs/t5x/fam_1b_finetune.gin",
        '--gin.MODEL_DIR="/shared/run"', "--multiprocess_gpu",
        "--coordinator_address=h1:12355", "--process_count=3",
        f"--process_index={i}"])
    assert remote == (f"cd /src/fam-jax && {{ trap '' HUP; {trainer} & pid=$!;"
                      " trap 'kill -TERM $pid' HUP TERM INT; wait $pid;"
                      " wait $pid; }")


def test_gpu_slurm_dry_run():
  """In the batch script: srun over the nodes; in each task: its trainer."""
  flags = ["--slurm", "--gin_file=train/tiny_passkey.gin", "--model_dir=/m"]
  lines = dry_run(GPU, *flags, "--", "--gin.X=1",
                  env={"SLURM_JOB_NODELIST": "gpu[07-08]",
                       "SLURM_JOB_NUM_NODES": "2"})
  trainer = ["python3", "-m", "fam_jax.cli.train",
             "--gin_file=train/tiny_passkey.gin", "--model_dir=/m",
             "--coordinator_address=gpu07:12355", "--num_processes=2"]
  assert lines == [
      shlex.join(["srun", "--nodes=2", "--ntasks=2", "--ntasks-per-node=1",
                  "--kill-on-bad-exit=1", GPU, *flags, "--", "--gin.X=1"]),
      "# task 0: " + shlex.join(trainer + ["--process_id=0", "--gin.X=1"]),
      "# task 1: " + shlex.join(trainer + ["--process_id=1", "--gin.X=1"])]
  task = dry_run(GPU, *flags, env={
      "SLURM_JOB_NODELIST": "gpu[07-08]", "SLURM_NTASKS": "2",
      "SLURM_PROCID": "1", "SLURM_STEP_ID": "0"})
  assert task == [shlex.join(trainer + ["--process_id=1"])]


@pytest.mark.parametrize("args, message", [
    (["--gin_file=g", "--model_dir=m"], "--local N, --hosts"),
    (["--local", "2", "--model_dir=m"], "--gin_file is required"),
    (["--local", "2", "--gin_file=g"], "--model_dir is required"),
    (["--local", "2", "--trainer", "torch", "--gin_file=g", "--model_dir=m"],
     "--trainer must be one of: fam, t5x; got 'torch'"),
    (["--local", "0", "--cpu_devices=4", "--gin_file=g", "--model_dir=m"],
     "--local must be a positive integer"),
    (["--local", "2", "--gin_file=g", "--model_dir=m"],
     "needs --cpu_devices K or --gpus_per_process G"),
    (["--hosts", "a,b", "--local", "2", "--gin_file=g", "--model_dir=m"],
     "give one of --local, --hosts, --slurm"),
    (["--local", "1", "--gin_file=g", "--model_dir=m", "--bogus"],
     "unknown flag '--bogus'"),
    (["--slurm", "--gin_file=g", "--model_dir=m"], "SLURM_JOB_NODELIST"),
])
def test_gpu_bad_flags(args, message):
  env = {k: "" for k in ("SLURM_JOB_NODELIST", "SLURM_JOB_NUM_NODES",
                         "SLURM_PROCID", "SLURM_STEP_ID")}
  result = launch(GPU, "--dry-run", *args, env=env)
  assert result.returncode == 2
  assert message in result.stderr and result.stdout == ""


# --- launch/tpu_vm.sh ------------------------------------------------------

def test_tpu_queued_t5x_dry_run():
  lines = dry_run(TPU, "--name", "fam-1b", "--zone", "us-east5-a",
                  "--accelerator_type", "v5p-32", "--bucket", "gs://bkt",
                  "--trainer", "t5x", "--queued", "--repo",
                  "https://github.com/me/fam-jax", "--gin_file",
                  "gin_configs/t5x/fam_1b_finetune.gin", "--", "--gin.X=1")
  commands = [shlex.split(line) for line in lines]
  assert commands[0] == [
      "gcloud", "compute", "tpus", "queued-resources", "create", "fam-1b",
      "--zone=us-east5-a", "--node-id=fam-1b", "--accelerator-type=v5p-32",
      "--runtime-version=v2-alpha-tpuv5"]
  assert commands[1][:2] == ["bash", "-c"] and "ACTIVE" in commands[1][2]
  ssh = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "fam-1b",
         "--zone=us-east5-a", "--worker=all"]
  assert [c[:-1] for c in commands[2:]] == [ssh, ssh]
  install, train = commands[2][-1], commands[3][-1]
  assert "git clone --depth=1 https://github.com/me/fam-jax fam-jax" in install
  assert "pip install -q -e '.[train]' 'jax[tpu]'" in install
  assert ("pip install -q --no-deps git+https://github.com/google-research/t5x "
          "git+https://github.com/google/airio "
          "git+https://github.com/google-research/jestimator") in install
  assert "pip install -q -e '.[t5x]'" in install
  assert train == "--command=cd fam-jax && " + shlex.join([
      "python3", "-m", "t5x.train",
      "--gin_file=gin_configs/t5x/fam_1b_finetune.gin",
      '--gin.MODEL_DIR="gs://bkt/fam-jax/fam-1b"', "--gin.X=1"])
  assert len(commands) == 4


def test_tpu_fam_copies_the_checkout_dry_run():
  lines = dry_run(TPU, "--name=v6", "--zone=us-east1-d",
                  "--accelerator_type=v6e-16", "--model_dir=gs://b/run",
                  "--gin_file=train/tiny_passkey.gin", "--project=p")
  commands = [shlex.split(line) for line in lines]
  assert commands[0] == [
      "gcloud", "compute", "tpus", "tpu-vm", "create", "v6", "--zone=us-east1-d",
      "--project=p", "--accelerator-type=v6e-16", "--version=v2-alpha-tpuv6e"]
  assert commands[1] == ["git", "-C", REPO, "archive", "--format=tar.gz",
                         "--output=/tmp/fam-jax-v6.tar.gz", "HEAD"]
  assert commands[2] == [
      "gcloud", "compute", "tpus", "tpu-vm", "scp", "/tmp/fam-jax-v6.tar.gz",
      "v6:fam-jax.tar.gz", "--zone=us-east1-d", "--project=p", "--worker=all"]
  assert "t5x" not in commands[3][-1]
  assert commands[4][-1] == (
      "--command=cd fam-jax && python3 -m fam_jax.cli.train --multihost "
      "--gin_file=train/tiny_passkey.gin --model_dir=gs://b/run")
  assert len(commands) == 5


@pytest.mark.parametrize("change, message", [
    ({"--name": None}, "--name is required"),
    ({"--name": "Fam_1"}, "--name must be lower-case"),
    ({"--zone": None}, "--zone is required"),
    ({"--accelerator_type": "a100-8"}, "--accelerator_type must look like"),
    ({"--trainer": "jax"}, "--trainer must be one of: fam, t5x; got 'jax'"),
    ({"--model_dir": "/local/run"}, "--model_dir must be on GCS"),
    ({"--model_dir": None}, "give --bucket gs://BUCKET or --model_dir"),
    ({"--gin_file": None}, "--gin_file is required"),
    ({"--repo": "/no/such/dir"}, "--repo must be a git URL"),
])
def test_tpu_bad_flags(change, message):
  flags = {"--name": "n", "--zone": "z", "--accelerator_type": "v4-8",
           "--model_dir": "gs://b/r", "--gin_file": "g.gin"}
  flags.update(change)
  args = [f"{k}={v}" for k, v in flags.items() if v is not None]
  result = launch(TPU, "--dry-run", *args)
  assert result.returncode == 2
  assert message in result.stderr and result.stdout == ""


# --- a real 2-process run --------------------------------------------------

# tiny_passkey.gin's model on 64-byte rows of the test fixture's text, 3 steps,
# no evaluation, over an fsdp=4 × tensor=2 mesh of 8 CPU devices: the params
# and optimizer state are sharded over both processes.
_TRAINER_ARGS = [
    "--module_import=train_fixture", "--no_progress", "--gin.TrainConfig.mixture_or_task_name='test_text_hamlet'",
    "--gin.TrainConfig.sequence_length=64", "--gin.TrainConfig.batch_size=8",
    "--gin.TrainConfig.train_steps=3", "--gin.TrainConfig.eval_every=0",
    "--gin.TrainConfig.decode_tasks=[]", "--gin.TrainConfig.log_every=1",
    "--gin.TrainConfig.mesh_data=1", "--gin.TrainConfig.mesh_fsdp=4",
    "--gin.TrainConfig.mesh_tensor=2",
    "--gin.FamConfig.remat='none'", "--gin.TrainConfig.export_merged=True",
]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(tmp_path, name, processes, devices):
  # train_cli imports seqio (seconds): only this test needs it.
  from train_cli import JAX_CACHE, environment  # pylint: disable=g-import-not-at-top
  return subprocess.Popen(
      [GPU, "--local", str(processes), "--cpu_devices", str(devices),
       "--python", sys.executable, "--port", str(_free_port()),
       "--gin_file=train/tiny_passkey.gin", f"--model_dir={tmp_path / name}",
       f"--log_dir={tmp_path / name}_logs", "--", *_TRAINER_ARGS,
       f"--jax_cache_dir={JAX_CACHE}"],
      cwd=REPO, env=environment(),  # conftest's fast-compile XLA_FLAGS
      stdout=subprocess.PIPE,
      stderr=subprocess.STDOUT, text=True)


def _losses(tmp_path, name, proc):
  output = proc.communicate(timeout=600)[0]
  logs = "".join(p.read_text()[-3000:]
                 for p in sorted((tmp_path / f"{name}_logs").glob("*.log")))
  assert proc.returncode == 0, output + logs
  rows = [json.loads(line) for line in
          (tmp_path / name / "metrics.jsonl").read_text().splitlines()]
  return [r["loss"] for r in rows if r["split"] == "train"]


@pytest.mark.multiprocess
def test_two_processes_train_like_one(tmp_path):
  """REAL multi-process run: launch/gpu.sh --local 2 --cpu_devices 4 starts two
  fam-train processes joined by jax.distributed (gloo collectives on CPU); the
  losses of their 3 steps equal those of one process with 8 devices, and so do
  the exported parameters."""
  started = time.perf_counter()
  # Both at once: the 2-process run spends much of its time waiting on itself.
  two = _start(tmp_path, "two", processes=2, devices=4)
  one = _start(tmp_path, "one", processes=1, devices=8)
  two_losses = _losses(tmp_path, "two", two)
  one_losses = _losses(tmp_path, "one", one)
  difference = max(abs(a - b) for a, b in zip(two_losses, one_losses))
  print(f"losses 2 processes {two_losses}, 1 process {one_losses}, largest "
        f"difference {difference:.2g}, {time.perf_counter() - started:.0f} s")
  assert len(two_losses) == len(one_losses) == 3
  assert difference <= 1e-5
  # The export gathers params sharded over both processes; they match.
  two_params, _ = checkpoint.load_checkpoint(str(tmp_path / "two" / "export"))
  one_params, _ = checkpoint.load_checkpoint(str(tmp_path / "one" / "export"))
  errors = [rel_err(a, b) for a, b in zip(jax.tree_util.tree_leaves(two_params),
                                          jax.tree_util.tree_leaves(one_params))]
  print(f"exported parameters: largest relative difference {max(errors):.2g}")
  assert max(errors) <= 1e-5


# --- gpu.sh's process handling, with a stand-in trainer --------------------

# Called as `PY -m fam_jax.cli.train ... --process_id=I`: records SIGTERM in
# $OUT/I; exits with $FAIL_<I> if that is set (once the 2 others have started),
# else waits for SIGTERM.
_FAKE_TRAINER = """#!/usr/bin/env bash
for arg in "$@"; do [[ $arg == --process_id=* ]] && id=${arg#*=}; done
trap 'echo TERM > "$OUT/$id"; exit 0' TERM
fail=FAIL_$id
if [[ -n ${!fail:-} ]]; then
  until [[ $(find "$OUT" -name '*.started' | wc -l) -ge 2 ]]; do sleep 0.05; done
  exit "${!fail}"
fi
echo started > "$OUT/$id.started"
sleep 60 >/dev/null 2>&1 & wait
"""


def _default_sigint():
  # A shell cannot trap a signal that was ignored when it started, and a test
  # runner started in the background of a script (`cmd &`) has SIGINT ignored:
  # give gpu.sh the default disposition, as a terminal would.
  signal.signal(signal.SIGINT, signal.SIG_DFL)


def _fake(tmp_path, **env):
  trainer = tmp_path / "trainer.sh"
  trainer.write_text(_FAKE_TRAINER)
  trainer.chmod(0o755)
  return subprocess.Popen(
      [GPU, "--local", "3", "--cpu_devices", "1", "--python", str(trainer),
       "--gin_file=g.gin", "--model_dir=m", "--port", str(_free_port())],
      cwd=tmp_path, env=dict(os.environ, OUT=str(tmp_path), **env),
      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
      preexec_fn=_default_sigint)


def _wait_for(paths, timeout=20):
  deadline = time.monotonic() + timeout
  while not all(p.exists() for p in paths):
    assert time.monotonic() < deadline, f"not all of {paths} appeared"
    time.sleep(0.05)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT],
                         ids=["SIGTERM", "SIGINT"])
def test_gpu_forwards_sigterm_and_sigint_as_sigterm(tmp_path, sig):
  proc = _fake(tmp_path)
  _wait_for([tmp_path / f"{i}.started" for i in range(3)])
  proc.send_signal(sig)
  # Under 50 s, the stand-ins' sleep (60 s): a process left without SIGTERM
  # fails the check of the TERM files below, however slow the machine.
  _, stderr = proc.communicate(timeout=50)
  assert proc.returncode == 0, stderr
  assert [(tmp_path / str(i)).read_text() for i in range(3)] == ["TERM\n"] * 3


def test_gpu_stops_the_others_when_one_fails(tmp_path):
  proc = _fake(tmp_path, FAIL_1="3")
  _, stderr = proc.communicate(timeout=20)
  assert proc.returncode == 3
  assert "process 1 exited with status 3" in stderr
  assert [(tmp_path / str(i)).exists() for i in range(3)] == [True, False, True]
