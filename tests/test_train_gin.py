"""The run gins of gin_configs/train/ parse into valid configs: the paper's
fine-tuning shapes and hyperparameters, the CPU runs."""

import gin
import pytest

from fam_jax.gin_utils import parse_gin
from fam_jax.train import init
from fam_jax.train.config import TrainConfig

# (gin, layers, d_model, heads, kv heads, mlp, learning rate) from PAPER.md.
PAPER = [("train/fam_1b.gin", 18, 1536, 12, 12, 12288, 1e-4),
         ("train/fam_8b.gin", 32, 4096, 32, 32, 16384, 3e-3),
         ("train/fam_24b.gin", 56, 4096, 32, 1, 32768, 3e-3)]


def configs(gin_file, *bindings):
  gin.clear_config()
  parse_gin([gin_file], bindings)
  train_cfg = TrainConfig()
  return train_cfg, init.model_config(train_cfg)


@pytest.mark.parametrize("gin_file,layers,d_model,heads,kv,mlp,lr", PAPER)
def test_paper_finetuning(gin_file, layers, d_model, heads, kv, mlp, lr):
  train_cfg, cfg = configs(gin_file)
  assert (cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.num_kv_heads,
          cfg.mlp_dim, cfg.vocab_size) == (layers, d_model, heads, kv, mlp, 256000)
  assert (cfg.attention, cfg.block_size, cfg.memory_segments, cfg.fam_length,
          cfg.lora_rank) == ("fam", 1024, 3, 64, 64)
  assert train_cfg.finetune == "lora"
  assert (train_cfg.mixture_or_task_name, train_cfg.sequence_length,
          train_cfg.batch_size, train_cfg.train_steps) == (
              "fam_flan_packed", 8704, 128, 50000)
  assert (train_cfg.zero_offset_probability,
          train_cfg.state_passing_probability) == (0.5, 0.8)
  opt = train_cfg.optimizer
  assert (opt.name, opt.beta1, opt.beta2, opt.schedule, opt.learning_rate) == (
      "adafactor", 0.9, 0.99, "constant", lr)
  _, twin = configs(gin_file, "ATTENTION = 'bswa'")
  assert twin.attention == "bswa" and twin.block_size == 1024


def test_tiny_passkey_run():
  train_cfg, cfg = configs("train/tiny_passkey.gin")
  assert train_cfg.mixture_or_task_name == "fam_passkey_train_short"
  assert cfg.vocab_size == 259 and cfg.attention == "fam"
  assert train_cfg.decode_tasks == ("fam_passkey_1k",)


def test_smollm2_run_overrides_what_fine_tuning_adds():
  gin.clear_config()
  parse_gin(["train/smollm2_fam_lora.gin"], ["ATTENTION = 'bswa'"])
  train_cfg = TrainConfig()
  assert train_cfg.init_checkpoint == "gguf:smollm2"
  assert train_cfg.model_overrides == {
      "attention": "bswa", "block_size": 128, "memory_segments": 1,
      "fam_length": 16, "lora_rank": 64, "remat": "none"}
  gin.clear_config()


def test_passkey_runs_differ_only_in_the_attention():
  """benchmarks/passkey.py's twins: same shapes, windows, data and steps."""
  runs = {a: configs("train/passkey_cpu.gin", f"ATTENTION = '{a}'")
          for a in ("fam", "bswa")}
  (fam_train, fam), (bswa_train, bswa) = runs["fam"], runs["bswa"]
  assert (fam.attention, bswa.attention) == ("fam", "bswa")
  assert fam.replace(attention="bswa") == bswa
  assert fam_train == bswa_train.__class__(
      **{**vars(bswa_train), "model_overrides": {"attention": "fam"}})
  assert (fam.num_layers, fam.block_size, fam.memory_segments,
          fam.fam_length, fam.d_model) == (2, 64, 3, 8, 128)
  assert fam_train.mixture_or_task_name == "fam_passkey_train_copy"
  memory, _ = configs("train/passkey_cpu.gin",
                      "STAGE_TASK = 'fam_passkey_train_far'")
  assert memory.mixture_or_task_name == "fam_passkey_train_far"
  smollm2_train, smollm2 = configs("train/passkey_smollm2.gin")
  assert smollm2_train.mixture_or_task_name == "fam_passkey_train"
  assert smollm2_train.model_overrides["block_size"] == 1024
  assert (smollm2_train.model_overrides["memory_segments"],
          smollm2_train.model_overrides["fam_length"]) == (3, 64)
  gin.clear_config()
