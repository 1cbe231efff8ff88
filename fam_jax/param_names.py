"""The names in FamLM's parameter tree, spelled once.

    token_embedder/embedding        [V, D]
    summarization_embeddings        [F, D]      attention='fam'
    layers/...                      [L, ...]    scanned layers (cfg.scan_layers)
    layers_0/..., layers_1/, ...                unscanned layers
    final_norm/{scale, bias?}       [D]
    lm_head/kernel                  [D, V]      untied output projection only

and in each layer

    pre_attention_norm/{scale, bias?}   attention/{q, k, v, o}/{kernel, lora_a?, lora_b?}
    pre_mlp_norm/{scale, bias?}         mlp/{gate, up, down}/{kernel, lora_a?, lora_b?}

(`bias` with cfg.norm='layernorm', `lora_a`/`lora_b` on cfg.lora_targets when
cfg.lora_rank > 0). The Flax declarations (`model.py`, `weights.py`) take the
names from here, and everything else reads parameters through the typed view
`weights.ModelWeights`, so no other module spells a path.
"""

TOKEN_EMBEDDER = "token_embedder"
EMBEDDING = "embedding"
SUMMARIZATION_EMBEDDINGS = "summarization_embeddings"
LAYERS = "layers"
FINAL_NORM = "final_norm"
LM_HEAD = "lm_head"

# Inside a layer.
PRE_ATTENTION_NORM = "pre_attention_norm"
PRE_MLP_NORM = "pre_mlp_norm"
ATTENTION = "attention"
MLP = "mlp"
Q, K, V, O = "q", "k", "v", "o"
GATE, UP, DOWN = "gate", "up", "down"
ATTENTION_PROJECTIONS = (Q, K, V, O)
MLP_PROJECTIONS = (GATE, UP, DOWN)
PROJECTIONS = ATTENTION_PROJECTIONS + MLP_PROJECTIONS

# Leaves.
KERNEL = "kernel"
LORA_A = "lora_a"
LORA_B = "lora_b"
SCALE = "scale"
BIAS = "bias"


def layer_name(index: int) -> str:
  """The group of unscanned layer `index`: layers_0, layers_1, ..."""
  return f"{LAYERS}_{index}"
