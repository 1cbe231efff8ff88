"""fam-train's decode evaluation presents each prompt as training presented
its rows: the decoder's BOS (id 0, which seqio's converters shift into
position 0), then the inputs. Its greedy tokens are those of the training
path run on that sequence."""

import jax.numpy as jnp
import numpy as np

import fam_jax.tasks  # noqa: F401  (registers the tasks)
from fam_jax.tasks import passkey
from fam_jax.tasks.features import DECODER_BOS
from fam_jax.train import data
from fam_jax.train import evaluate
from util import init_params, tiny_config

TASK = "test_passkey_decode_bos"


def test_decode_metrics_prompts_start_with_the_decoder_bos(monkeypatch):
  if TASK not in data.import_seqio().TaskRegistry.names():
    passkey.register_passkey_task(TASK, (0, 32), seed=3, num_examples=2,
                                  splits=("test",))
  cfg = tiny_config(vocab_size=259, attention="fam", block_size=8,
                    memory_segments=0, fam_length=2)
  model, params = init_params(cfg)
  seen = []

  def recording_generate(params, cfg, state, prompts, *, lengths, **kwargs):
    result = generate(params, cfg, state, prompts, lengths=lengths, **kwargs)
    seen.extend((p[:n], t) for p, n, t in zip(prompts, lengths, result.tokens))
    return result

  generate = evaluate.generate
  monkeypatch.setattr(evaluate, "generate", recording_generate)
  metrics = evaluate.decode_metrics(params, cfg, TASK, "test", 2,
                                    max_new_tokens=3, batch_size=2)
  assert metrics["examples"] == 2
  examples = list(data.get_task(TASK).get_dataset(
      None, split="test", shuffle=False, use_cached=False,
      num_epochs=1).as_numpy_iterator())
  for (prompt, tokens), example in zip(seen, examples):
    np.testing.assert_array_equal(prompt, [DECODER_BOS, *example["inputs"]])
    # Greedy on the training path: each generated token is the argmax after
    # the BOS, the inputs and the tokens before it.
    assert tokens
    ids = np.asarray([[*prompt, *tokens]], np.int32)
    logits = model.apply({"params": params}, ids)[0, len(prompt) - 1:-1]
    assert list(np.asarray(jnp.argmax(logits, -1))) == tokens
