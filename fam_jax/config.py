"""FamConfig: the one place where a TransformerFAM architecture is described.

Every field is gin-configurable (`FamConfig.fam_length = 64` in a .gin file) and
checked on construction, so a bad combination fails at once with an error that names
the field and the values it accepts instead of deep inside a traced computation.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import gin
import jax.numpy as jnp

from fam_jax import param_names

ATTENTION_KINDS = ("full", "bswa", "fam")
ACTIVATIONS = ("swiglu", "geglu")
NORMS = ("rmsnorm", "layernorm")
DTYPES = ("float32", "bfloat16", "float16")
REMAT_POLICIES = ("none", "full", "dots")
ATTENTION_KERNELS = ("einsum", "xla", "cudnn")
FIRST_FAM_RESIDUALS = ("zero", "initial")
# The projections of a layer, by their parameter names.
LORA_TARGETS = param_names.PROJECTIONS


@gin.configurable
@dataclasses.dataclass(frozen=True)
class FamConfig:
  """Architecture of a decoder-only TransformerFAM / TransformerBSWA / Transformer.

  Attributes:
    vocab_size: number of token ids.
    num_layers: decoder layers `L`.
    d_model: width of the residual stream `D`.
    num_heads: query heads.
    mlp_dim: hidden width of the gated feed-forward block.
    num_kv_heads: key/value heads; `num_heads` is multi-head attention, 1 is
      multi-query, anything dividing `num_heads` is grouped-query. None: num_heads.
    head_dim: width of one head. None: d_model / num_heads (which must divide).
    activation: gated feed-forward, `swiglu` (SiLU gate) or `geglu` (tanh-GELU gate).
    norm: pre-layer normalisation, `rmsnorm` or `layernorm`.
    norm_eps: epsilon of the normalisation.
    norm_scale_offset: the norm multiplies by `norm_scale_offset + scale`; 0 for
      Llama, 1 for Gemma (whose checkpoints store `scale - 1`).
    scale_embeddings: multiply token embeddings by sqrt(d_model) (Gemma).
    tie_embeddings: the output projection is the transposed token embedding.
    rope_theta: RoPE base; θ_i = rope_theta^(-2i/head_dim).
    dtype: compute dtype of activations (softmax and norms always run in float32).
    param_dtype: dtype the parameters are stored in.
    attention: `full` (causal over the whole input), `bswa` (block sliding window
      attention, Algorithm 1 of the paper) or `fam` (BSWA + feedback attention
      memory, Algorithm 2).
    block_size: block length `N` of bswa/fam (paper: 1024).
    memory_segments: number `m` of previous blocks a block attends to (paper: 3).
    fam_length: FAM tokens `F` per layer (paper: 64). Used only by `fam`; `bswa` is
      the same computation with no FAM, so a gin override of `attention` alone
      switches between the two.
    first_fam_residual: the residual of a layer's first FAM update (from its
      initial FAM): `zero` as the paper's appendix B.1 says, or `initial` (the
      initial FAM, like every later update). [choice: the paper's `zero` is the
      default; a pretrained model converted without fine-tuning starts far
      better from `initial`, see README "SmolLM2".]
    lora_rank: rank of the LoRA adapters; 0 disables them (paper: 64).
    lora_alpha: LoRA scaling numerator (the update is `alpha / rank * A @ B`).
      None means alpha = rank, i.e. a scale of 1 (the paper does not say).
    lora_targets: which projections get adapters, a subset of
      q, k, v, o (attention) and gate, up, down (feed-forward).
    init_std: standard deviation of the token and summarization embeddings at init.
    scan_layers: stack the layers with `nn.scan` (compile time independent of depth).
    remat: rematerialisation policy per layer: `none`, `full` (save nothing but
      the layer inputs) or `dots` (save matmul outputs without batch dims).
    fam_scan_unroll: blocks per iteration of the FAM's `lax.scan` over the
      blocks (its `unroll`); 1 keeps one block per iteration, so compile time
      does not grow with the length. More lets XLA fuse and schedule across
      blocks: on an H100 the paper's 1B step at 8k tokens took 338 instead of
      400 ms with all 8 blocks unrolled (docs/speed.md, Training on GPUs).
    fam_scan_batched_grads: differentiate the FAM scan with
      `scan_grads.scan`: the layer's weight gradients computed once for all
      blocks after the backward pass through the FAM chain, instead of added
      up block by block (same numbers, another order; the FAM's forward is
      recomputed twice). [choice: off by default.] On 2 CPU cores it helps
      with remat `none` (FAM/BSWA 1.12 -> 1.10 at N=256, 1.10 -> 1.03 and
      1.13 -> 1.09 at N=1024) and hurts with remat `full` (1.13 -> 1.16),
      which already reruns that forward; an H100 spent up to 55 of the 1B
      step's 400 ms on the block-by-block sums (docs/speed.md, Training on
      GPUs), not yet re-measured.
    attention_kernel: what computes the masked attention of the training path
      (block attention, FAM update, `full`): `einsum`, fam-jax's own
      (`layers.attend`, float32 logits, every backend); `xla` or `cudnn`,
      `jax.nn.dot_product_attention` with that implementation (`cudnn` is
      cuDNN's fused flash attention on NVIDIA GPUs: bfloat16/float16 compute,
      head_dim a multiple of 8, the mask passed as an additive bias). The
      streaming path reads its caches piece by piece with its own online softmax
      whatever this says.
  """

  vocab_size: int
  num_layers: int
  d_model: int
  num_heads: int
  mlp_dim: int
  num_kv_heads: Optional[int] = None
  head_dim: Optional[int] = None
  activation: str = "swiglu"
  norm: str = "rmsnorm"
  norm_eps: float = 1e-6
  norm_scale_offset: float = 0.0
  scale_embeddings: bool = False
  tie_embeddings: bool = True
  rope_theta: float = 10_000.0
  dtype: str = "float32"
  param_dtype: str = "float32"
  attention: str = "fam"
  block_size: int = 1024
  memory_segments: int = 3
  fam_length: int = 64
  first_fam_residual: str = "zero"
  lora_rank: int = 0
  lora_alpha: Optional[float] = None
  lora_targets: tuple[str, ...] = LORA_TARGETS
  init_std: float = 0.02
  scan_layers: bool = True
  remat: str = "full"
  fam_scan_unroll: int = 1
  fam_scan_batched_grads: bool = False
  attention_kernel: str = "einsum"

  def __post_init__(self):
    # gin hands lists for sequences; keep the config hashable.
    object.__setattr__(self, "lora_targets", tuple(self.lora_targets))
    if self.num_kv_heads is None:
      object.__setattr__(self, "num_kv_heads", self.num_heads)
    if self.head_dim is None and _is_positive_int(self.num_heads):
      if _is_positive_int(self.d_model) and self.d_model % self.num_heads:
        _fail("d_model", self.d_model,
              f"a multiple of num_heads={self.num_heads} when head_dim is unset "
              "(head_dim = d_model / num_heads); or set head_dim")
      object.__setattr__(self, "head_dim", self.d_model // self.num_heads)
    self.validate()

  def validate(self) -> None:
    """Raises ValueError naming the first field that is out of range."""
    for name in ("vocab_size", "num_layers", "d_model", "num_heads", "mlp_dim",
                 "num_kv_heads", "head_dim", "block_size"):
      if not _is_positive_int(getattr(self, name)):
        _fail(name, getattr(self, name), "a positive integer")
    if self.num_heads % self.num_kv_heads:
      _fail("num_kv_heads", self.num_kv_heads,
            f"a divisor of num_heads={self.num_heads} (1 = multi-query)")
    if self.head_dim % 2:
      _fail("head_dim", self.head_dim, "an even number (RoPE rotates pairs)")
    _check_choice("activation", self.activation, ACTIVATIONS)
    _check_choice("norm", self.norm, NORMS)
    _check_choice("dtype", self.dtype, DTYPES)
    _check_choice("param_dtype", self.param_dtype, DTYPES)
    _check_choice("attention", self.attention, ATTENTION_KINDS)
    _check_choice("remat", self.remat, REMAT_POLICIES)
    if not _is_positive_int(self.fam_scan_unroll):
      _fail("fam_scan_unroll", self.fam_scan_unroll, "a positive integer")
    if not isinstance(self.fam_scan_batched_grads, bool):
      _fail("fam_scan_batched_grads", self.fam_scan_batched_grads,
            "True or False")
    _check_choice("attention_kernel", self.attention_kernel, ATTENTION_KERNELS)
    if self.attention_kernel == "cudnn" and self.dtype == "float32":
      _fail("attention_kernel", self.attention_kernel,
            "'einsum' or 'xla' when dtype='float32' (cuDNN's flash attention "
            "computes in bfloat16 or float16)")
    _check_choice("first_fam_residual", self.first_fam_residual,
                  FIRST_FAM_RESIDUALS)
    if not self.norm_eps > 0:
      _fail("norm_eps", self.norm_eps, "a number > 0")
    if not self.rope_theta > 0:
      _fail("rope_theta", self.rope_theta, "a number > 0")
    if not self.init_std > 0:
      _fail("init_std", self.init_std, "a number > 0")
    if not (isinstance(self.memory_segments, int) and self.memory_segments >= 0):
      _fail("memory_segments", self.memory_segments, "an integer >= 0")
    if self.attention == "fam":
      if not _is_positive_int(self.fam_length):
        _fail("fam_length", self.fam_length, "a positive integer when attention='fam'")
      if self.fam_length > self.block_size:
        _fail("fam_length", self.fam_length,
              f"at most block_size={self.block_size} (FAM takes the last "
              "fam_length positions of the block it compressed)")
    if not (isinstance(self.lora_rank, int) and self.lora_rank >= 0):
      _fail("lora_rank", self.lora_rank, "an integer >= 0 (0 disables LoRA)")
    if self.lora_alpha is not None and not self.lora_alpha > 0:
      _fail("lora_alpha", self.lora_alpha, "None or a number > 0")
    unknown = [t for t in self.lora_targets if t not in LORA_TARGETS]
    if unknown or (self.lora_rank and not self.lora_targets):
      _fail("lora_targets", self.lora_targets,
            f"a non-empty subset of {LORA_TARGETS}")

  # Derived quantities: named once here so that no module recomputes them.

  @property
  def num_fam_tokens(self) -> int:
    """F as the computation sees it: fam_length for `fam`, 0 otherwise."""
    return self.fam_length if self.attention == "fam" else 0

  @property
  def is_blockwise(self) -> bool:
    return self.attention in ("bswa", "fam")

  @property
  def num_query_groups(self) -> int:
    """Query heads that share one key/value head."""
    return self.num_heads // self.num_kv_heads

  @property
  def lora_scale(self) -> float:
    alpha = self.lora_rank if self.lora_alpha is None else self.lora_alpha
    return float(alpha) / self.lora_rank if self.lora_rank else 0.0

  @property
  def compute_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.dtype)

  @property
  def weights_dtype(self) -> jnp.dtype:
    return jnp.dtype(self.param_dtype)

  def replace(self, **changes) -> "FamConfig":
    """A copy with some fields changed (validated again)."""
    return dataclasses.replace(self, **changes)


def _is_positive_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool) and value > 0


def _check_choice(name, value, allowed) -> None:
  if value not in allowed:
    _fail(name, value, "one of " + ", ".join(repr(a) for a in allowed))


def _fail(name, value, allowed: str) -> None:
  raise ValueError(f"FamConfig.{name} must be {allowed}; got {value!r}")
