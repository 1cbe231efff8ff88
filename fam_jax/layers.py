"""Pure building blocks of a decoder layer: norms, RoPE, projections, attention math.

Functions here take weights as arrays (the pytrees of `weights.py`), never Flax
modules, so the same math serves the layer-major training path (`blockwise.py`),
the FAM update that runs inside `jax.lax.scan`, and the block-major streaming path.

Shape letters: B batch, T tokens, S keys, D d_model, H query heads, K key/value
heads, G query heads per key/value head, E head_dim, F FAM tokens, R LoRA rank.
"""

from __future__ import annotations

import math
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import struct

# Added to masked attention logits. Finite on purpose: a query with no visible key
# (a padding query) then gets a uniform, finite average instead of NaN.
MASKED_LOGIT = -1e30


@struct.dataclass
class Projection:
  """A linear map, with an optional LoRA update `lora_scale * (x @ A) @ B`.

  `kernel` has the input axes first and the output axes last; `lora_a` is
  [input axes..., R] and `lora_b` is [R, output axes...].
  """

  kernel: jax.Array
  lora_a: Optional[jax.Array] = None
  lora_b: Optional[jax.Array] = None
  num_in_axes: int = struct.field(pytree_node=False, default=1)
  lora_scale: float = struct.field(pytree_node=False, default=0.0)


def project(x: jax.Array, p: Projection, dtype) -> jax.Array:
  """Contracts the last `p.num_in_axes` axes of x with the kernel's input axes."""
  x = x.astype(dtype)
  y = jnp.tensordot(x, p.kernel.astype(dtype), axes=p.num_in_axes)
  if p.lora_a is not None:
    low_rank = jnp.tensordot(x, p.lora_a.astype(dtype), axes=p.num_in_axes)
    y = y + p.lora_scale * jnp.tensordot(low_rank, p.lora_b.astype(dtype), axes=1)
  return y


@struct.dataclass
class Norm:
  scale: jax.Array
  bias: Optional[jax.Array] = None  # layernorm only


def normalize(x: jax.Array, w: Norm, *, kind: str, eps: float,
              scale_offset: float) -> jax.Array:
  """RMSNorm or LayerNorm over the last axis, computed in float32."""
  dtype = x.dtype
  x = x.astype(jnp.float32)
  if kind == "layernorm":
    x = x - jnp.mean(x, axis=-1, keepdims=True)
  x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)
  x = x * (scale_offset + w.scale.astype(jnp.float32))
  if w.bias is not None:
    x = x + w.bias.astype(jnp.float32)
  return x.astype(dtype)


def _turn_fractions(head_dim: int, theta: float) -> tuple[np.ndarray, np.ndarray]:
  """Frequency i in turns per position, θ^(-2i/E) / 2π, as a 64-bit binary
  fraction split into two uint32 words (high, low)."""
  inv_freq = theta ** (-np.arange(head_dim // 2, dtype=np.float64) * 2.0 / head_dim)
  turns = inv_freq / (2.0 * np.pi)  # < 1
  high = np.floor(turns * 2.0**32)
  low = np.floor((turns * 2.0**32 - high) * 2.0**32)
  return high.astype(np.uint32), low.astype(np.uint32)


def _mul_high(a: jax.Array, b: jax.Array) -> jax.Array:
  """floor(a * b / 2^32) for uint32 a, b, in uint32 arithmetic (no 64-bit ints)."""
  mask = jnp.uint32(0xFFFF)
  a1, a0 = a >> 16, a & mask
  b1, b0 = b >> 16, b & mask
  middle = ((a0 * b0) >> 16) + ((a1 * b0) & mask) + ((a0 * b1) & mask)
  return a1 * b1 + ((a1 * b0) >> 16) + ((a0 * b1) >> 16) + (middle >> 16)


def rope_angles(positions: jax.Array, head_dim: int, theta: float) -> jax.Array:
  """RoPE angles position·θ^(-2i/E) reduced modulo 2π, float32 [..., E/2].

  The product is formed in 64-bit fixed point with uint32 words, so the angle is
  exact to ~4e-7 rad at any integer position; the float32 product used by most
  implementations is off by up to ~0.02 rad at position 300k, the range of the
  paper's contexts plus its random position offsets.

  Args:
    positions: [...] integer positions (negative allowed: FAM may sit before 0).
  """
  high, low = _turn_fractions(head_dim, theta)
  positions = positions.astype(jnp.int32)[..., None]
  magnitude = jnp.abs(positions).astype(jnp.uint32)
  # Top 32 bits of the fraction of magnitude * (high + low / 2^32) turns.
  turns = magnitude * jnp.asarray(high) + _mul_high(magnitude, jnp.asarray(low))
  turns = jnp.where(positions < 0, jnp.uint32(0) - turns, turns)
  return turns.astype(jnp.float32) * jnp.float32(2.0 * np.pi / 2.0**32)


def apply_rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary position embedding, rotate-half layout (as Llama and Gemma).

  Args:
    x: [..., T, heads, E].
    positions: [..., T] integer absolute positions.
    theta: the base; frequency i is theta^(-2i/E).
  """
  angles = rope_angles(positions, x.shape[-1], theta)  # [..., T, E/2]
  sin = jnp.sin(angles)[..., None, :]
  cos = jnp.cos(angles)[..., None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


def gated_mlp(x: jax.Array, gate: Projection, up: Projection, down: Projection,
              *, activation: str, dtype) -> jax.Array:
  """SwiGLU / GeGLU feed-forward: down(act(gate(x)) * up(x))."""
  g = project(x, gate, dtype)
  if activation == "swiglu":
    g = jax.nn.silu(g)
  elif activation == "geglu":
    g = jax.nn.gelu(g, approximate=True)
  else:
    raise ValueError(f"unknown activation {activation!r}")
  return project(g * project(x, up, dtype), down, dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array) -> jax.Array:
  """Masked dot-product attention with grouped key/value heads.

  Layout: each key/value head's queries (T positions x G heads) are the rows
  of one plain batched matmul, [..., K, T*G, E] @ [..., K, E, S], and the
  probabilities [..., K, T*G, S] multiply [..., K, S, E]. On CPU this runs the
  training block attention's forward+backward up to 1.6x faster than einsums
  whose outputs put G before T (XLA then transposes the float32 scores).
  The streaming path reads its head-major caches with the same layout, a
  piece at a time (`online_softmax_add`).

  Args:
    q: [..., T, H, E] queries (RoPE already applied).
    k: [..., S, K, E] keys, K dividing H (GQA/MQA).
    v: [..., S, K, E] values.
    mask: boolean, broadcastable to [..., T, S]; True where the query may look.

  Returns:
    [..., T, H, E] in the dtype of q. Logits and softmax run in float32.
  """
  *batch, t, h, _ = q.shape
  kv_heads = k.shape[-2]
  rows = group_queries(q, kv_heads)
  # Fresh keys go straight to [..., K, E, S], the values to [..., K, S, E].
  k = jnp.moveaxis(k, -3, -1)
  v = jnp.swapaxes(v, -3, -2)
  logits = jnp.einsum("...qe,...es->...qs", rows, k,
                      preferred_element_type=jnp.float32)
  # Mask and softmax as [..., K, T, G, S]: as [..., K, T*G, S] the training
  # block attention's forward+backward ran 4-7% slower on CPU.
  probs = jax.nn.softmax(masked(logits, mask, t), axis=-1)
  probs = probs.reshape(*batch, kv_heads, t * (h // kv_heads), logits.shape[-1])
  return ungroup_heads(jnp.matmul(probs.astype(v.dtype), v), t)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array,
              kernel: str = "einsum") -> jax.Array:
  """`attend`, or `jax.nn.dot_product_attention` with implementation `kernel`
  ('xla' or 'cudnn'; FamConfig.attention_kernel): same arguments, same result.

  jax.nn.dot_product_attention takes one batch axis and a [batch, 1, T, S]
  mask, so the leading axes of q, k, v and the mask fold into one. A query
  that sees no key (padding) gets what `attend`'s finite MASKED_LOGIT gives
  it, the plain mean of all values, with no gradient to q or k: its query is
  zeroed and it sees every key. cuDNN's own answer for such rows differed and
  its gradients were far off (H100: relative error 437 on the key projection
  of a packed BSWA batch whose loss counted the padding).
  """
  if kernel == "einsum":
    return attend(q, k, v, mask)
  *batch, t, _, _ = q.shape
  s = k.shape[-3]
  fold = lambda x: x.reshape(-1, *x.shape[-3:])
  mask = jnp.broadcast_to(mask, (*batch, t, s)).reshape(-1, 1, t, s)
  sees_a_key = jnp.any(mask, axis=-1, keepdims=True)  # [batch, 1, T, 1]
  mask = mask | ~sees_a_key
  rows = jnp.where(jnp.swapaxes(sees_a_key, 1, 2), fold(q), 0)
  out = jax.nn.dot_product_attention(rows, fold(k), fold(v), mask=mask,
                                     implementation=kernel)
  return out.reshape(q.shape)


def group_queries(q: jax.Array, kv_heads: int) -> jax.Array:
  """[..., T, H, E] queries -> [..., K, T*G, E], scaled by 1/sqrt(E): the rows
  of key/value head k are its G query heads at every position."""
  *batch, t, h, e = q.shape
  g = h // kv_heads
  q = jnp.moveaxis(q.reshape(*batch, t, kv_heads, g, e), -3, -4)
  return q.reshape(*batch, kv_heads, t * g, e) * (1.0 / math.sqrt(e))


def masked(logits: jax.Array, mask: jax.Array, t: int) -> jax.Array:
  """[..., K, T*G, S] logits -> [..., K, T, G, S], MASKED_LOGIT where mask
  [..., T, S] is False (every query head of a position shares its mask)."""
  *batch, k, tg, s = logits.shape
  logits = logits.reshape(*batch, k, t, tg // t, s)
  return jnp.where(mask[..., None, :, None, :], logits, MASKED_LOGIT)


# A softmax built up piece by piece (online softmax): the streaming path reads
# its keys a piece at a time (cache tiles, ring segments, FAM, block) and never
# holds the scores of all of them. The carry is (running max [..., K, T*G],
# running sum of exponentials [..., K, T*G], weighted values [..., K, T*G, E]),
# in float32. A row whose keys so far were all masked carries MASKED_LOGIT as
# its max; its first visible key rescales that junk away by exp(-1e30) = 0.
def online_softmax_start(rows: jax.Array):
  """The empty carry for `group_queries` rows [..., K, T*G, E]."""
  shape = rows.shape[:-1]
  return (jnp.full(shape, MASKED_LOGIT, jnp.float32),
          jnp.zeros(shape, jnp.float32), jnp.zeros(rows.shape, jnp.float32))


def online_softmax_add(carry, rows: jax.Array, k: jax.Array, v: jax.Array,
                       mask: Optional[jax.Array], t: int):
  """Adds keys k and values v [..., K, S, E] to the carry; mask (broadcastable
  to [..., T, S]) or None where every query sees every key."""
  top, total, acc = carry
  logits = jnp.einsum("...qe,...se->...qs", rows, k,
                      preferred_element_type=jnp.float32)
  if mask is not None:
    logits = masked(logits, mask, t).reshape(logits.shape)
  new_top = jnp.maximum(top, logits.max(axis=-1))
  rescale = jnp.exp(top - new_top)
  probs = jnp.exp(logits - new_top[..., None])
  acc = acc * rescale[..., None] + jnp.matmul(probs.astype(v.dtype), v)
  return new_top, total * rescale + probs.sum(axis=-1), acc


def online_softmax_finish(carry, t: int, dtype) -> jax.Array:
  """The attention output [..., T, H, E] of a finished carry."""
  _, total, acc = carry
  return ungroup_heads((acc / total[..., None]).astype(dtype), t)


def ungroup_heads(out: jax.Array, t: int) -> jax.Array:
  """The inverse of `group_queries` for outputs: [..., K, T*G, E] ->
  [..., T, H, E]."""
  *batch, k, tg, e = out.shape
  g = tg // t
  out = jnp.moveaxis(out.reshape(*batch, k, t, g, e), -4, -3)
  return out.reshape(*batch, t, k * g, e)


def pre_attention(w, x: jax.Array, positions: jax.Array, cfg):
  """Norm, Q/K/V projections and RoPE: the first half of a decoder layer.

  Args:
    w: LayerWeights.
    x: [..., T, D] layer inputs (tokens or FAM).
    positions: [..., T] their absolute positions.
    cfg: FamConfig.

  Returns:
    q [..., T, H, E], k [..., T, K, E], v [..., T, K, E].
  """
  dtype = cfg.compute_dtype
  h = normalize(x, w.attn_norm, kind=cfg.norm, eps=cfg.norm_eps,
                scale_offset=cfg.norm_scale_offset)
  q = apply_rope(project(h, w.q, dtype), positions, cfg.rope_theta)
  k = apply_rope(project(h, w.k, dtype), positions, cfg.rope_theta)
  return q, k, project(h, w.v, dtype)


def post_attention(w, heads: jax.Array, residual: jax.Array, cfg) -> jax.Array:
  """Output projection + residual, then the pre-LN feed-forward + residual.

  `A = O(heads) + residual`, `out = FF(PreLN(A)) + A` (Algorithm 2, steps 2-3).
  """
  dtype = cfg.compute_dtype
  a = residual.astype(dtype) + project(heads, w.o, dtype)
  h = normalize(a, w.mlp_norm, kind=cfg.norm, eps=cfg.norm_eps,
                scale_offset=cfg.norm_scale_offset)
  return a + gated_mlp(h, w.gate, w.up, w.down, activation=cfg.activation,
                       dtype=dtype)


def embed(vectors: jax.Array, cfg) -> jax.Array:
  """Token (or summarization) embedding rows -> residual stream inputs."""
  x = vectors.astype(cfg.compute_dtype)
  if cfg.scale_embeddings:
    x = x * jnp.asarray(math.sqrt(cfg.d_model), x.dtype)
  return x


def output_logits(x: jax.Array, final_norm: Norm, embedding: jax.Array,
                  lm_head: Optional[jax.Array], cfg) -> jax.Array:
  """Final norm and output projection: [..., D] -> float32 [..., V].

  `embedding` [V, D] is the output projection when cfg.tie_embeddings, else
  `lm_head` [D, V].
  """
  x = normalize(x, final_norm, kind=cfg.norm, eps=cfg.norm_eps,
                scale_offset=cfg.norm_scale_offset)
  table = embedding if cfg.tie_embeddings else lm_head.T
  return project_to_logits(x, table.astype(x.dtype))


@jax.custom_vjp
def project_to_logits(x: jax.Array, table: jax.Array) -> jax.Array:
  """x [..., D] times the output table [V, D]: float32 logits [..., V].

  The backward pass multiplies in x's dtype: autodiff would hand the float32
  logits' cotangent to both products and promote bfloat16 x and table to
  float32 (the two largest matmuls of a bf16 step with a 256k vocabulary; on
  an H100 float32 (TF32) GEMMs took 40 of the 1B step's 263 ms). Accumulation
  stays float32, as in every other bf16 matmul here.
  """
  return jnp.einsum("...d,vd->...v", x, table,
                    preferred_element_type=jnp.float32)


def _project_to_logits_fwd(x, table):
  return project_to_logits(x, table), (x, table)


def _project_to_logits_bwd(saved, cotangent):
  x, table = saved
  cotangent = cotangent.astype(x.dtype)
  dx = jnp.einsum("...v,vd->...d", cotangent, table,
                  preferred_element_type=jnp.float32)
  dtable = jnp.einsum("...v,...d->vd", cotangent, x,
                      preferred_element_type=jnp.float32)
  return dx.astype(x.dtype), dtable.astype(table.dtype)


project_to_logits.defvjp(_project_to_logits_fwd, _project_to_logits_bwd)
