"""fam-jax inside t5x: FamDecoderOnlyModel against fam-train's loss, fam-generate's
decoding and FamLM's forward pass; decode memory against the prompt length; and
`python -m t5x.train` / `t5x.infer` end to end on CPU (one run of each, sharing a
checkpoint). Skipped without t5x."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import atexit
import functools

import pytest

pytest.importorskip("t5x")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import seqio  # noqa: E402
from t5x import optimizers as t5x_optimizers  # noqa: E402

from fam_jax import checkpoint, lora, param_names, streaming  # noqa: E402
from fam_jax.cli.generate import main as generate_main  # noqa: E402
from fam_jax.config import FamConfig  # noqa: E402
from fam_jax.generate import generate  # noqa: E402
from fam_jax.model import FamLM  # noqa: E402
from fam_jax.t5x import checkpoints as t5x_checkpoints  # noqa: E402
from fam_jax.t5x.models import FAM_STATE, FamDecoderOnlyModel  # noqa: E402
from fam_jax.t5x.module import FamT5xDecoder  # noqa: E402
from fam_jax.t5x.optim import fam_optimizer  # noqa: E402
from fam_jax.text.tokenizer import ByteTokenizer, IncrementalDecoder  # noqa: E402
from fam_jax.train import step as train_step  # noqa: E402
from fam_jax.train.config import TrainConfig  # noqa: E402
from fam_jax.train.optimizer import learning_rate_schedule, make_optimizer  # noqa: E402

import t5x_fixture  # noqa: E402

TESTS = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(TESTS)
JAX_CACHE = tempfile.mkdtemp(prefix="fam_t5x_test_jax_cache_")
atexit.register(shutil.rmtree, JAX_CACHE, ignore_errors=True)
EOS = seqio.ByteVocabulary().eos_id

# The trainer tests' tiny FAM model, with LoRA.
CFG = FamConfig(vocab_size=259, num_layers=2, d_model=32, num_heads=4,
                num_kv_heads=2, mlp_dim=64, attention="fam", block_size=16,
                memory_segments=1, fam_length=4, lora_rank=4, remat="none")


def _model(cfg=CFG, train_config=None, optimizer=None):
  train_config = train_config or TrainConfig(finetune="lora")
  optimizer = optimizer or fam_optimizer(train_config, cfg)
  return FamDecoderOnlyModel(FamT5xDecoder(cfg), seqio.ByteVocabulary(),
                             t5x_optimizers.OptaxWrapper(optimizer),
                             train_config=train_config)


@functools.lru_cache(maxsize=None)
def _params(cfg=CFG, seed=0):
  """Random params of FamT5xDecoder's tree, LoRA adapters included (drawn
  on the host: compiling Flax's init, or jax.random's generators, costs more
  than the tests that use them)."""
  shapes = jax.eval_shape(lambda: FamT5xDecoder(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1)), jnp.ones((1, 1)),
      enable_dropout=False)["params"])

  rng = np.random.default_rng(seed)
  flat, tree = jax.tree_util.tree_flatten_with_path(shapes)
  return jax.tree_util.tree_unflatten(tree, [jnp.asarray(
      (1.0 if path[-1].key == param_names.SCALE else 0.0)
      + 0.1 * rng.standard_normal(leaf.shape), leaf.dtype)
      for path, leaf in flat])


def _packed_batch(batch=2, length=48, seed=3):
  rng = np.random.default_rng(seed)
  segments = np.ones((batch, length), np.int32)
  segments[0, 30:] = 2
  segments[1, 40:] = 0
  positions = np.zeros((batch, length), np.int32)
  for b in range(batch):
    for s in np.unique(segments[b]):
      where = segments[b] == s
      positions[b, where] = np.arange(where.sum())
  targets = rng.integers(3, 259, (batch, length)).astype(np.int32) * (segments > 0)
  inputs = np.where(positions == 0, 0, np.roll(targets, 1, axis=1)) * (segments > 0)
  weights = rng.choice([0.0, 0.1, 1.0], (batch, length)).astype(np.float32)
  return {"decoder_input_tokens": jnp.asarray(inputs, jnp.int32),
          "decoder_target_tokens": jnp.asarray(targets),
          "decoder_segment_ids": jnp.asarray(segments),
          "decoder_positions": jnp.asarray(positions),
          "decoder_loss_weights": jnp.asarray(weights * (segments > 0))}


def _prefix_batch(prompts, new_tokens):
  """t5x's prefix-LM features for prompts (lists of ids), as seqio makes them."""
  length = max(map(len, prompts)) + 1 + new_tokens
  tokens = np.zeros((len(prompts), length), np.int32)
  causal = np.zeros((len(prompts), length), np.int32)
  for b, prompt in enumerate(prompts):
    tokens[b, 1:len(prompt) + 1] = prompt
    causal[b, :len(prompt) + 1] = 1
  zeros = np.zeros_like(tokens)
  return {"decoder_input_tokens": tokens, "decoder_causal_attention": causal,
          "decoder_target_tokens": zeros, "decoder_loss_weights": zeros}


def _fam_generate(params, cfg, prompt, new_tokens):
  """fam_jax.generate's greedy tokens after `prompt` (its stop token dropped)."""
  result = generate(params, cfg, streaming.init_state(params, cfg, 1),
                    np.asarray([prompt], np.int32), max_new_tokens=new_tokens,
                    stop_tokens=[EOS])
  return result.tokens[0]


# --- in-process: the model against its references --------------------------


def test_loss_equals_fam_train_loss():
  """t5x's training loss against fam-train's train step on the same batch,
  params and key: random position offset (never 0 here), the previous step's
  FAM (always passed here), z-loss, packed rows with 0.1 weights."""
  params = _params()
  batch = _packed_batch()
  train_config = TrainConfig(finetune="lora", zero_offset_probability=0.0,
                             state_passing_probability=1.0, z_loss=1e-4)
  model = _model(train_config=train_config)
  fam = jnp.asarray(0.5 * np.random.default_rng(7).standard_normal(
      (CFG.num_layers, 2, CFG.fam_length, CFG.d_model)), jnp.float32)
  rng = jax.random.PRNGKey(11)
  optimizer = make_optimizer(train_config.optimizer, train_config.train_steps)
  mask = lora.trainable_mask(params)
  trainable, _ = train_step.split_params(params, mask)
  state = train_step.TrainState(step=jnp.zeros((), jnp.int32), params=params,
                                opt_state=jax.jit(optimizer.init)(trainable),
                                rng=rng, fam=fam, fam_valid=jnp.ones((), bool))
  fam_step = train_step.make_train_step(
      CFG, train_config, optimizer, mask,
      learning_rate_schedule(train_config.optimizer, train_config.train_steps))
  new_state, metrics = jax.jit(fam_step)(state, batch)
  _, step_rng = jax.random.split(rng)  # the key fam-train's step draws with
  mutables = {FAM_STATE: {"fam": fam, "valid": jnp.ones((), bool)}}
  t5x_loss, (t5x_metrics, new_mutables) = jax.jit(model.loss_fn)(
      params, batch, step_rng, mutables)
  assert abs(float(t5x_loss) - float(metrics["loss"])) <= 1e-6, (
      t5x_loss, metrics["loss"])
  print(f"\n[t5x loss] {float(t5x_loss):.9f} fam-train {float(metrics['loss']):.9f}"
        f" diff {abs(float(t5x_loss) - float(metrics['loss'])):.2e}")
  # The next step starts from this step's final FAM, as fam-train's does.
  np.testing.assert_allclose(new_mutables[FAM_STATE]["fam"], new_state.fam,
                             atol=1e-6)
  assert bool(new_mutables[FAM_STATE]["valid"])
  assert float(t5x_metrics["fam_passed"].compute()) == 1.0


def test_streamed_scores_equal_full_forward():
  params = _params()
  model = _model()
  batch = _packed_batch()
  unpacked = {k: batch[k] for k in ("decoder_input_tokens",
                                    "decoder_target_tokens",
                                    "decoder_loss_weights")}
  scores = jax.jit(model.score_batch)(params, unpacked)
  logits = jax.jit(FamLM(CFG).apply)({"params": params},
                                     unpacked["decoder_input_tokens"])
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(
      log_probs, unpacked["decoder_target_tokens"][..., None], -1)[..., 0]
  reference = jnp.sum(picked * unpacked["decoder_loss_weights"], axis=-1)
  np.testing.assert_allclose(scores, reference, rtol=1e-5, atol=1e-4)


def _predict_fn(model):
  """t5x's predict_batch with the temperature as an argument: one compiled
  program for greedy decoding (0) and sampling."""
  return jax.jit(lambda p, batch, key, temperature: model.predict_batch_with_aux(
      p, batch, key, decoder_params={"temperature": temperature, "topk": 0})[0])


def _decode_memory(cfg, prompt_length, new_tokens=8):
  """(compiled program, (arguments, temporaries, outputs, decode cache) bytes)
  of t5x's predict_batch for one prompt of prompt_length tokens."""
  model = _model(cfg, TrainConfig(finetune="full"))
  params = jax.eval_shape(lambda: FamT5xDecoder(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1)), jnp.ones((1, 1)),
      enable_dropout=False)["params"])
  length = prompt_length + 1 + new_tokens
  spec = jax.ShapeDtypeStruct((1, length), jnp.int32)
  batch = {k: spec for k in ("decoder_input_tokens", "decoder_causal_attention",
                             "decoder_target_tokens", "decoder_loss_weights")}
  compiled = _predict_fn(model).lower(
      params, batch, jax.ShapeDtypeStruct((2,), jnp.uint32),
      jax.ShapeDtypeStruct((), jnp.float32)).compile()
  stats = compiled.memory_analysis()
  return compiled, (stats.argument_size_in_bytes, stats.temp_size_in_bytes,
                    stats.output_size_in_bytes, _cache_bytes(cfg, length))


def _cache_bytes(cfg, length):
  """Bytes of the decode cache FamT5xDecoder creates for [1, length] inputs."""
  params = jax.eval_shape(lambda: FamT5xDecoder(cfg).init(
      jax.random.PRNGKey(0), jnp.ones((1, 1)), jnp.ones((1, 1)),
      enable_dropout=False)["params"])
  cache = jax.eval_shape(lambda p: FamT5xDecoder(cfg).apply(
      {"params": p}, jnp.ones((1, length), jnp.int32), None, decode=True,
      mutable=["cache"])[1], params)
  return sum(x.size * x.dtype.itemsize for x in jax.tree_util.tree_leaves(cache))


def test_fam_decode_memory_does_not_grow_with_the_prompt(capsys):
  cfg = FamConfig(vocab_size=259, num_layers=2, d_model=512, num_heads=8,
                  mlp_dim=1024, attention="fam", block_size=256,
                  memory_segments=1, fam_length=16, remat="none")
  programs, results = {}, {}
  for prompt in (2048, 32768):
    programs[prompt], results["fam", prompt] = _decode_memory(cfg, prompt)
  with capsys.disabled():
    for (attention, prompt), (args, temp, out, cache) in results.items():
      print(f"\n[t5x decode memory] {attention} prompt {prompt}: arguments "
            f"{args / 2**20:.2f} MiB, temporaries {temp / 2**20:.2f} MiB, "
            f"outputs {out / 2**20:.2f} MiB, peak {(args + temp + out) / 2**20:.2f}"
            f" MiB; decode cache {cache / 2**20:.2f} MiB")
  peak = {k: sum(v[:3]) for k, v in results.items()}
  assert results["fam", 2048][3] == results["fam", 32768][3]
  assert peak["fam", 32768] <= 1.10 * peak["fam", 2048], peak
  # What t5x's own decoder-only cache would hold instead: a KV cache of the
  # whole sequence (attention='full' streams as one).
  full = _cache_bytes(cfg.replace(attention="full"), 32768 + 9)
  with capsys.disabled():
    print(f"[t5x decode memory] a full-sequence KV cache at 32768: "
          f"{full / 2**20:.2f} MiB")
  assert full >= 32 * results["fam", 32768][3]

  # The 2k program runs: greedy and temperature sampling through t5x's
  # sampler (t5x.infer's greedy tokens are checked against fam_jax.generate
  # below): tokens in the vocabulary, reproducible from the key, not greedy's.
  prompt = list(np.random.default_rng(5).integers(3, 259, 2048))
  batch = _prefix_batch([prompt], 8)
  params = _params(cfg)
  run = lambda seed, t: np.asarray(programs[2048](
      params, batch, jax.random.PRNGKey(seed), jnp.float32(t)))[0, :8]
  greedy, sampled = run(0, 0.0), run(1, 1.0)
  np.testing.assert_array_equal(sampled, run(1, 1.0))
  assert ((sampled >= 0) & (sampled < cfg.vocab_size)).all()
  assert not np.array_equal(sampled, greedy)


# --- subprocesses: t5x.train, then t5x.infer from its checkpoint -------------


def _environment():
  env = dict(os.environ, JAX_PLATFORMS="cpu",
             JAX_COMPILATION_CACHE_DIR=JAX_CACHE,
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
  env["PYTHONPATH"] = os.pathsep.join(
      [TESTS] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p])
  return env


def _run(module, *args, timeout=600):
  result = subprocess.run([sys.executable, "-m", module, *args], cwd=REPO,
                          env=_environment(), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == 0, result.stderr[-4000:]
  return result


TRAIN_STEPS = 2
# The tiny run fine-tunes rank-4 LoRA with the paper's Adafactor.
LORA_GIN = os.path.join(TESTS, "t5x_lora.gin")


@pytest.fixture(scope="module")
def t5x_run(tmp_path_factory):
  """A t5x.train run of gin_configs/t5x/tiny_passkey.gin on Hamlet rows."""
  model_dir = tmp_path_factory.mktemp("t5x") / "run"
  result = _run(
      "t5x.train", "--gin_file=gin_configs/t5x/tiny_passkey.gin",
      f"--gin_file={LORA_GIN}",
      f"--gin.MODEL_DIR='{model_dir}'",
      f"--gin.MIXTURE_OR_TASK_NAME='{t5x_fixture.TRAIN_TASK}'",
      "--gin.MIXTURE_OR_TASK_MODULE='t5x_fixture'",
      "--gin.TASK_FEATURE_LENGTHS={'targets': 64}",
      f"--gin.TRAIN_STEPS={TRAIN_STEPS}", "--gin.BATCH_SIZE=2",
      f"--gin.EVAL_PERIOD={TRAIN_STEPS}")
  return model_dir, result.stderr


@pytest.fixture(scope="module")
def t5x_predictions(t5x_run):
  """t5x.infer of test_passkey_t5x from the run's checkpoint."""
  model_dir, _ = t5x_run
  output = model_dir.parent / "infer"
  _run("t5x.infer", "--gin_file=gin_configs/t5x/tiny.gin", f"--gin_file={LORA_GIN}",
       "--gin_file=gin_configs/t5x/infer_passkey.gin",
       f"--gin.CHECKPOINT_PATH='{model_dir}/checkpoint_{TRAIN_STEPS}'",
       f"--gin.INFER_OUTPUT_DIR='{output}'",
       f"--gin.MIXTURE_OR_TASK_NAME='{t5x_fixture.PASSKEY_TASK}'",
       "--gin.MIXTURE_OR_TASK_MODULE='t5x_fixture'",
       "--gin.TASK_FEATURE_LENGTHS={'inputs': 512, 'targets': 8}")
  files = sorted(output.glob(f"{t5x_fixture.PASSKEY_TASK}-predict.jsonl*"))
  files = [f for f in files if not f.name.endswith("COMPLETED")]
  assert files, list(output.iterdir())
  return [json.loads(line) for line in files[0].read_text().splitlines()]


def _tiny_config():
  return t5x_checkpoints.model_config(["t5x/tiny.gin", LORA_GIN])


def test_t5x_train_writes_checkpoints_and_evaluates(t5x_run):
  model_dir, log = t5x_run
  assert (model_dir / f"checkpoint_{TRAIN_STEPS}" / "state").is_dir()
  evals = [line for line in log.splitlines() if "collection=training_eval" in line]
  assert evals, log[-3000:]
  loss = float(evals[-1].split(" loss=")[1].split(",")[0])
  assert 0 < loss < 10, evals[-1]
  assert (model_dir / "training_eval").is_dir()
  # Random state passing: the FAM of the last step is in the checkpoint.
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  state = ocp.PyTreeCheckpointer().restore(
      str(model_dir / f"checkpoint_{TRAIN_STEPS}" / "state"))
  fam_state = state["flax_mutables"][FAM_STATE]
  assert bool(fam_state["valid"]) and np.abs(fam_state["fam"]).max() > 0
  # LoRA through t5x's optimizer: from step 0 to the last, the adapters and
  # FAM's embeddings moved, the base model did not.
  before = t5x_checkpoints.read_params(str(model_dir / "checkpoint_0"))
  after = t5x_checkpoints.read_params(str(model_dir / f"checkpoint_{TRAIN_STEPS}"))
  moved = jax.tree_util.tree_map(lambda a, b: bool(np.any(a != b)), before, after)
  assert moved == lora.trainable_mask(before)


def test_t5x_infer_decodes_passkey_like_fam_generate(t5x_run, t5x_predictions):
  model_dir, _ = t5x_run
  cfg = _tiny_config()
  params = t5x_checkpoints.read_params(str(model_dir / f"checkpoint_{TRAIN_STEPS}"))
  vocabulary = seqio.ByteVocabulary()
  assert len(t5x_predictions) == 4
  for example in t5x_predictions:
    prompt = vocabulary.encode(example["inputs"]["inputs_pretokenized"])
    assert 400 < len(prompt) <= 512
    reference = _fam_generate(params, cfg, [0] + prompt, 8)
    assert example["prediction"] == vocabulary.decode(reference)


def test_t5x_checkpoint_streams_through_fam_generate(t5x_run, tmp_path, capsys):
  model_dir, _ = t5x_run
  source = str(model_dir / f"checkpoint_{TRAIN_STEPS}")
  cfg = _tiny_config()
  t5x_checkpoints.convert(source, str(tmp_path / "fam"), cfg)
  params, loaded_cfg = checkpoint.load_checkpoint(str(tmp_path / "fam"))
  assert loaded_cfg == cfg
  jax.tree_util.tree_map(np.testing.assert_array_equal, params,
                         t5x_checkpoints.read_params(source))
  # t5x trained on rows that start with the decoder BOS, and fam-generate
  # feeds it before the prompt, as t5x's decoding does.
  assert checkpoint.load_prompt_prefix(str(tmp_path / "fam")) == [0]
  prompt = "The pass key is 4242. Remember it."
  capsys.readouterr()
  assert generate_main(["--checkpoint", str(tmp_path / "fam"), "--prompt",
                        prompt, "--max-new-tokens", "6", "--no-progress"]) == 0
  out = capsys.readouterr().out
  tokenizer = ByteTokenizer()
  decoder = IncrementalDecoder(tokenizer)  # how fam-generate prints tokens
  tokens = _fam_generate(params, cfg, [0] + tokenizer.encode(prompt), 6)
  assert out == "".join(decoder.push(t) for t in tokens) + decoder.flush() + "\n"


# --- the gin files ------------------------------------------------------------


def _parse_run(files, bindings, monkeypatch):
  """Parses t5x run gins as t5x's programs do (their `__main__` functions)."""
  import __main__  # pylint: disable=g-import-not-at-top
  from t5x import eval as t5x_eval, infer as t5x_infer, train as t5x_train  # pylint: disable=g-import-not-at-top,g-multiple-import
  from fam_jax.gin_utils import GIN_CONFIGS_DIR  # pylint: disable=g-import-not-at-top
  import gin  # pylint: disable=g-import-not-at-top
  for name, fn in (("train", t5x_train.train), ("evaluate", t5x_eval.evaluate),
                   ("infer", t5x_infer.infer)):
    monkeypatch.setattr(__main__, name, fn, raising=False)
  gin.clear_config()
  gin.add_config_file_search_path(
      os.path.dirname(os.path.dirname(t5x_train.__file__)))
  gin.add_config_file_search_path(str(GIN_CONFIGS_DIR))
  gin.parse_config_files_and_bindings(list(files), list(bindings),
                                      finalize_config=False)
  return gin


# (size, layers, learning rate, v5p submesh, v6e submesh): PAPER.md and
# gin_configs/train/fam_*.gin.
PAPER_RUNS = [("1b", 18, 1e-4, (1, 1, 1, 1), (1, 1, 1, 1)),
              ("8b", 32, 3e-3, (2, 2, 1, 1), (2, 2, 1, 1)),
              ("24b", 56, 3e-3, (2, 2, 2, 1), (2, 4, 1, 1))]


@pytest.mark.parametrize("size,layers,lr,v5p,v6e", PAPER_RUNS)
def test_paper_finetuning_gins_give_the_paper_recipe(size, layers, lr, v5p,
                                                     v6e, monkeypatch):
  from fam_jax.t5x import models  # pylint: disable=g-import-not-at-top
  required = ["MODEL_DIR='/m'", "INITIAL_CHECKPOINT_PATH='/c'"]
  gin = _parse_run([f"t5x/fam_{size}_finetune.gin"], required, monkeypatch)
  cfg = models.fam_config()
  assert (cfg.num_layers, cfg.lora_rank, cfg.attention, cfg.block_size,
          cfg.fam_length, cfg.memory_segments) == (layers, 64, "fam", 1024, 64, 3)
  train_config = TrainConfig()
  assert (train_config.optimizer.name, train_config.optimizer.learning_rate,
          train_config.optimizer.beta1, train_config.optimizer.beta2,
          train_config.optimizer.schedule) == ("adafactor", lr, 0.9, 0.99,
                                               "constant")
  assert train_config.finetune == "lora"
  assert [models.from_train_config(n) for n in (
      "mixture_or_task_name", "task_feature_lengths", "batch_size",
      "train_steps")] == ["fam_flan_packed", {"targets": 8704}, 128, 50000]
  assert gin.query_parameter("%V5P_SUBMESH") == v5p
  assert gin.query_parameter("%V6E_SUBMESH") == v6e
  gin = _parse_run([f"t5x/fam_{size}_finetune.gin", "t5x/v6e.gin"], required,
                   monkeypatch)
  assert gin.query_parameter("%MODEL_PARALLEL_SUBMESH").scoped_configurable_fn(
      ) == v6e


def test_eval_and_infer_gins_parse(monkeypatch):
  for run, bindings in (
      ("t5x/eval_passkey.gin", ["CHECKPOINT_PATH='/c'", "EVAL_OUTPUT_DIR='/o'"]),
      ("t5x/eval_long_context.gin", ["CHECKPOINT_PATH='/c'",
                                     "EVAL_OUTPUT_DIR='/o'"]),
      ("t5x/infer_passkey.gin", ["CHECKPOINT_PATH='/c'",
                                 "INFER_OUTPUT_DIR='/o'"])):
    gin = _parse_run(["t5x/fam_8b.gin", run], bindings, monkeypatch)
    assert gin.query_parameter("%MIXTURE_OR_TASK_NAME").startswith("fam_")


def test_a_wrong_run_is_refused_clearly(monkeypatch):
  from fam_jax.t5x import models  # pylint: disable=g-import-not-at-top
  _parse_run(["t5x/tiny.gin"], ["TrainConfig.init_checkpoint = '/ckpt'"],
             monkeypatch)
  with pytest.raises(ValueError, match="INITIAL_CHECKPOINT_PATH"):
    models.fam_config()
  with pytest.raises(ValueError, match="no field 'batch'"):
    models.from_train_config("batch")
  with pytest.raises(TypeError, match="FamT5xDecoder"):
    FamDecoderOnlyModel(FamLM(CFG), seqio.ByteVocabulary(),
                        t5x_optimizers.OptaxWrapper(optax.sgd(0.1)))
