"""FamT5xDecoder: FamLM behind t5x's decoder-only call signature.

t5x's `DecoderOnlyModel` calls its module as

    logits = module.apply(variables, decoder_input_tokens, decoder_target_tokens,
                          decoder_segment_ids=..., decoder_positions=...,
                          decode=..., prefill=..., prefill_lengths=...)

This adapter runs FamLM unchanged. Its parameters are FamLM's own, at the top of
the tree (`nn.share_scope`): the same `params` (and `params_axes`, from FamLM's
`param_with_axes` declarations) that fam-train, fam-generate and
`weights.ModelWeights` use, so a t5x checkpoint holds a fam-jax params tree.

Decoding keeps a `streaming.StreamState` in the `cache` collection instead of a
KV cache of the whole sequence, so its memory does not grow with the prompt:

- cache creation (`decode=True` and no cache yet): `streaming.init_state` for the
  batch (attention='full' gets a KV cache of the input's length);
- prefill (`prefill=True`): the first prefill_lengths[b] tokens of each row are
  streamed in block by block (`streaming.prefill_traced`);
- a step (`decode=True`, input [B, 1]): one token per stream (`streaming.step`).

Cache leaves have the batch on axis 1 (layer-major state; the per-stream
counters are stored [1, B]), which t5x's decoding expects of scanned layers: the
module reports `scan_layers = True` for that reason.
"""

from __future__ import annotations

from typing import Optional

import jax
import jax.numpy as jnp
from flax import linen as nn

from fam_jax import streaming
from fam_jax.config import FamConfig
from fam_jax.model import FamLM

CACHE = "cache"
# StreamState fields with one value per stream ([B]); stored as [1, B].
_PER_STREAM = ("position", "fill", "blocks_done", "fam_fresh")


def state_to_cache(state: streaming.StreamState) -> dict[str, jax.Array]:
  """A StreamState as cache leaves whose batch axis is axis 1."""
  return {k: v[None] if k in _PER_STREAM else v
          for k, v in state._asdict().items()}


def cache_to_state(cache) -> streaming.StreamState:
  """The inverse of `state_to_cache`."""
  return streaming.StreamState(**{
      k: cache[k][0] if k in _PER_STREAM else cache[k]
      for k in streaming.StreamState._fields})


class FamT5xDecoder(nn.Module):
  """FamLM with t5x's decoder-only signature and a streaming decode cache.

  Attributes:
    cfg: the model's FamConfig.
  """

  cfg: FamConfig

  @property
  def scan_layers(self) -> bool:
    """t5x reads this to put the cache's batch axis at 1 (see module doc)."""
    return True

  def setup(self):
    self.lm = FamLM(self.cfg)
    nn.share_scope(self, self.lm)  # FamLM's params at the top of the tree

  def __call__(self,
               decoder_input_tokens: jax.Array,
               decoder_target_tokens: Optional[jax.Array],
               decoder_segment_ids: Optional[jax.Array] = None,
               decoder_positions: Optional[jax.Array] = None,
               decoder_causal_attention: Optional[jax.Array] = None,
               *,
               enable_dropout: bool = True,
               decode: bool = False,
               max_decode_length: Optional[int] = None,
               prefill: bool = False,
               prefill_lengths: Optional[jax.Array] = None,
               position_offset: Optional[jax.Array] = None,
               fam_state: Optional[jax.Array] = None,
               fam_state_valid: Optional[jax.Array] = None,
               return_fam_state: bool = False):
    """Logits [B, T, V] of decoder_input_tokens (t5x's signature).

    Args:
      decoder_input_tokens: [B, T] ids (floats from t5x's init are cast).
      decoder_target_tokens: unused (t5x passes it; the loss is the model's).
      decoder_segment_ids, decoder_positions: packing, as FamLM's
        segment_ids/positions.
      decoder_causal_attention: must be None: FAM is causal (no prefix LM).
      enable_dropout: unused (FamLM has no dropout; the paper mentions none).
      decode: streaming decode: create the cache, or feed one token [B, 1].
      max_decode_length: unused (the stream needs no length, except
        attention='full', whose cache is sized at creation).
      prefill: stream the first prefill_lengths[b] tokens of each row into the
        cache; returns the last of them's logits [B, 1, V].
      prefill_lengths: [B] tokens to prefill.
      position_offset, fam_state, fam_state_valid, return_fam_state: FamLM's
        training inputs (random position offset, random state passing).
    """
    del decoder_target_tokens, enable_dropout, max_decode_length
    if decoder_causal_attention is not None:
      raise ValueError("FamT5xDecoder is causal: inputs_bidirectional_attention "
                       "(prefix LM) is not supported by FAM/BSWA")
    if prefill or decode:
      return self._stream(decoder_input_tokens, prefill, prefill_lengths)
    return self.lm(decoder_input_tokens, positions=decoder_positions,
                   segment_ids=decoder_segment_ids,
                   position_offset=position_offset, fam_state=fam_state,
                   fam_state_valid=fam_state_valid,
                   return_fam_state=return_fam_state)

  def _stream(self, tokens, prefill, prefill_lengths):
    cfg = self.cfg
    tokens = jnp.asarray(tokens).astype(jnp.int32)
    batch, length = tokens.shape
    params = self.variables["params"]
    if not self.has_variable(CACHE, "fill"):
      # Cache creation: t5x discards these logits.
      state = streaming.init_state(params, cfg, batch, capacity=length)
      for name, value in state_to_cache(state).items():
        self.put_variable(CACHE, name, value)
      return jnp.zeros((batch, 1, cfg.vocab_size), jnp.float32)
    state = cache_to_state({k: self.get_variable(CACHE, k)
                            for k in streaming.StreamState._fields})
    if prefill:
      if prefill_lengths is None:
        raise ValueError("prefill=True needs prefill_lengths [batch]")
      logits, state = streaming.prefill_traced(params, cfg, state, tokens,
                                               prefill_lengths)
    else:
      if length != 1:
        raise ValueError(f"decode=True feeds one token per row; got {length}")
      logits, state = streaming.step(params, state, tokens,
                                     jnp.ones((batch,), jnp.int32), cfg, False)
    for name, value in state_to_cache(state).items():
      self.put_variable(CACHE, name, value)
    return logits[:, None]
