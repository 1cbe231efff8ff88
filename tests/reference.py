"""A deliberately naive TransformerFAM in float64 NumPy, written for clarity only.

This is Algorithm 2 of the paper as literally as possible: one Python loop over
blocks, inside it a loop over layers; FAM is *prepended* to the block, one Q/K/V
projection runs over [FAM; block], keys are the explicit concatenation
[memory segments; FAM; block], and the mask is spelled out entry by entry. The last
block is simply shorter (no padding). It shares no code with fam_jax, only the
parameter tree layout.
"""

from __future__ import annotations

import math

import numpy as np


def _np(x):
  return np.asarray(x, np.float64)


def layer_params(params, cfg, layer):
  """The parameter subtree of one layer, as float64 arrays."""
  if cfg.scan_layers:
    tree = params["layers"]
    pick = lambda x: _np(x)[layer]
  else:
    tree = params[f"layers_{layer}"]
    pick = _np

  def walk(t):
    return {k: walk(v) if isinstance(v, dict) else pick(v) for k, v in t.items()}

  return walk(dict(tree))


def norm(x, p, cfg):
  if cfg.norm == "layernorm":
    x = x - x.mean(-1, keepdims=True)
  x = x / np.sqrt((x * x).mean(-1, keepdims=True) + cfg.norm_eps)
  x = x * (cfg.norm_scale_offset + p["scale"])
  if "bias" in p:
    x = x + p["bias"]
  return x


def linear(x, p, cfg, in_axes):
  """x [..., in] @ kernel, plus the LoRA term if the layer has one."""
  kernel = p["kernel"]
  y = np.tensordot(x, kernel, axes=in_axes)
  if "lora_a" in p:
    y = y + cfg.lora_scale * np.tensordot(
        np.tensordot(x, p["lora_a"], axes=in_axes), p["lora_b"], axes=1)
  return y


def rope(x, positions, theta):
  """x [T, heads, E], positions [T]."""
  e = x.shape[-1]
  out = np.empty_like(x)
  for t in range(x.shape[0]):
    for i in range(e // 2):
      angle = positions[t] * theta ** (-2.0 * i / e)
      a, b = x[t, :, i], x[t, :, i + e // 2]
      out[t, :, i] = a * math.cos(angle) - b * math.sin(angle)
      out[t, :, i + e // 2] = b * math.cos(angle) + a * math.sin(angle)
  return out


def mlp(x, p, cfg):
  gate = linear(x, p["gate"], cfg, 1)
  if cfg.activation == "swiglu":
    gate = gate / (1.0 + np.exp(-gate))
  else:  # tanh-approximated GELU
    gate = 0.5 * gate * (1 + np.tanh(math.sqrt(2 / math.pi) *
                                     (gate + 0.044715 * gate ** 3)))
  return linear(gate * linear(x, p["up"], cfg, 1), p["down"], cfg, 1)


def attention(q, k, v, mask, cfg):
  """q [Tq, H, E], k/v [S, K, E], mask [Tq, S] -> [Tq, H, E], one head at a time."""
  heads = q.shape[1]
  group = heads // k.shape[1]
  out = np.zeros_like(q)
  for h in range(heads):
    kv = h // group
    logits = q[:, h] @ k[:, kv].T / math.sqrt(q.shape[-1])
    for t in range(q.shape[0]):
      if not mask[t].any():
        continue  # a padding query that sees nothing: output 0 (never compared)
      seen = logits[t][mask[t]]
      probs = np.exp(seen - seen.max())
      out[t, h] = (probs / probs.sum()) @ v[:, kv][mask[t]]
  return out


def layer_forward(x, positions, p, cfg, extra_k, extra_v, mask, residual):
  """Pre-LN layer over rows x; keys are [extra keys; keys of x]."""
  h = norm(x, p["pre_attention_norm"], cfg)
  att = p["attention"]
  q = rope(linear(h, att["q"], cfg, 1), positions, cfg.rope_theta)
  k = rope(linear(h, att["k"], cfg, 1), positions, cfg.rope_theta)
  v = linear(h, att["v"], cfg, 1)
  keys = np.concatenate([extra_k, k]) if len(extra_k) else k
  values = np.concatenate([extra_v, v]) if len(extra_v) else v
  a = residual + linear(attention(q, keys, values, mask, cfg), att["o"], cfg, 2)
  return a + mlp(norm(a, p["pre_mlp_norm"], cfg), p["mlp"], cfg), k, v


def reference_forward(params, cfg, tokens, positions=None, position_offset=None,
                      fam_state=None, fam_state_valid=None, segment_ids=None):
  """Returns (logits [B, T, V], final FAM [L, B, F, D] or None).

  With segment_ids (0 = padding) logits at padding positions are meaningless.
  """
  tokens = np.asarray(tokens)
  batch, length = tokens.shape
  if positions is None:
    positions = np.tile(np.arange(length), (batch, 1))
  positions = np.asarray(positions, np.int64)
  if position_offset is not None:
    positions = positions + np.asarray(position_offset)[:, None]
  embedding = _np(params["token_embedder"]["embedding"])
  scale = math.sqrt(cfg.d_model) if cfg.scale_embeddings else 1.0
  layers = [layer_params(params, cfg, l) for l in range(cfg.num_layers)]
  out_kernel = (embedding.T if cfg.tie_embeddings
                else _np(params["lm_head"]["kernel"]))

  all_logits, all_fam = [], []
  for b in range(batch):
    x = embedding[tokens[b]] * scale
    pos = positions[b]
    seg = None if segment_ids is None else np.asarray(segment_ids)[b]
    if cfg.attention == "full":
      h = x
      for p in layers:
        mask = np.zeros((length, length), bool)
        for i in range(length):
          for j in range(i + 1):
            mask[i, j] = seg is None or (seg[j] != 0 and seg[j] == seg[i])
        h, _, _ = layer_forward(h, pos, p, cfg, [], [], mask, h)
      hidden = h
      final_fam = None
    else:
      state = None
      if fam_state is not None and (fam_state_valid is None or fam_state_valid[b]):
        state = _np(fam_state)[:, b]
      hidden, final_fam = _blockwise_example(x, pos, seg, layers, params, cfg,
                                             scale, state)
    hidden = norm(hidden, {k: _np(v) for k, v in params["final_norm"].items()}, cfg)
    all_logits.append(hidden @ out_kernel)
    all_fam.append(final_fam)
  fam = None if all_fam[0] is None else np.stack(all_fam, axis=1)
  return np.stack(all_logits), fam


def _blockwise_example(x, pos, seg, layers, params, cfg, scale, state):
  """One example, block by block. seg None: one segment, no padding."""
  n, m = cfg.block_size, cfg.memory_segments
  f = cfg.fam_length if cfg.attention == "fam" else 0
  length, d = x.shape
  packed = seg is not None
  if not packed:
    seg = np.ones(length, np.int64)
  valid = seg != 0

  # Initial FAM F_0 of each layer: summarization embeddings through layers
  # 1..l-1, FAM tokens alone.
  initial = []
  chain = (_np(params["summarization_embeddings"]) * scale if f
           else np.zeros((0, d)))
  for p in layers:
    initial.append(chain)
    if f:
      chain, _, _ = layer_forward(chain, np.arange(f) - f, p, cfg, [], [],
                                  np.ones((f, f), bool), chain)
  fam = [s.copy() for s in state] if state is not None else list(initial)
  fresh = [state is None] * len(layers)
  first = np.flatnonzero(valid)
  fam_segment = seg[first[0]] if len(first) else 0

  past = [[] for _ in layers]  # per layer: (keys, values) of every earlier block
  past_seg = []  # segment ids of every earlier block's tokens (0 = padding)
  outputs = []
  prev_last = None
  for start in range(0, length, n):
    h = x[start:start + n]
    bpos, bseg, bvalid = pos[start:start + n], seg[start:start + n], valid[start:start + n]
    size = h.shape[0]
    fam_start = bpos[0] if prev_last is None else prev_last + 1
    fam_pos = fam_start - f + np.arange(f)
    real = np.flatnonzero(bvalid)
    has_tokens = len(real) > 0
    last_segment = bseg[real[-1]] if has_tokens else fam_segment
    reset = has_tokens and last_segment != fam_segment
    new_segment = [i for i in real if bseg[i] != fam_segment]
    init_pos = (bpos[new_segment[0]] if new_segment else bpos[0]) - f + np.arange(f)
    g = f if packed else 0  # rows of the initial FAM (packed inputs only)
    mem_seg = (np.concatenate(past_seg[-m:]) if m and past_seg
               else np.zeros(0, np.int64))
    s = len(mem_seg)

    # Rows: [FAM (f); initial FAM (g); block (size)].
    # Columns: [memory (s); FAM (f); initial FAM (g); block (size)].
    rows = f + g + size
    mask = np.zeros((rows, s + rows), bool)
    for i in range(f + g):  # FAM queries: their FAM group, the summarised segment
      group = slice(s, s + f) if i < f else slice(s + f, s + f + g)
      mask[i, group] = True
      for j in range(size):
        mask[i, s + f + g + j] = bvalid[j] and bseg[j] == last_segment
    for i in range(size):  # block queries
      r = f + g + i
      for j in range(s):
        mask[r, j] = mem_seg[j] != 0 and mem_seg[j] == bseg[i]
      mask[r, s:s + f] = bseg[i] == fam_segment
      mask[r, s + f:s + f + g] = bseg[i] != fam_segment
      for j in range(i + 1):
        mask[r, s + f + g + j] = bvalid[j] and bseg[j] == bseg[i]

    for l, p in enumerate(layers):
      mem = past[l][-m:] if m else []
      empty = np.zeros((0, cfg.num_kv_heads, cfg.head_dim))
      mem_k = np.concatenate([k for k, _ in mem]) if mem else empty
      mem_v = np.concatenate([v for _, v in mem]) if mem else empty
      z = np.concatenate([fam[l], initial[l][:g], h])
      residual = z.copy()
      if cfg.first_fam_residual == "zero":
        if fresh[l]:
          residual[:f] = 0.0  # first FAM update: zero residual instead of F_0
        residual[f:f + g] = 0.0  # a FAM restarted for a new segment: likewise
      zpos = np.concatenate([fam_pos, init_pos[:g], bpos])
      out, k, v = layer_forward(z, zpos, p, cfg, mem_k, mem_v, mask, residual)
      past[l].append((k[f + g:], v[f + g:]))
      if has_tokens:
        fam[l] = out[f:f + g] if reset else out[:f]
        fresh[l] = False
      h = out[f + g:]
    past_seg.append(np.where(bvalid, bseg, 0))
    outputs.append(h)
    prev_last = bpos[-1]
    fam_segment = last_segment
  final_fam = np.stack(fam) if f else None
  return np.concatenate(outputs), final_fam
