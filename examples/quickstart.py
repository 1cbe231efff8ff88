"""The README's usage example: a tiny TransformerFAM, its logits and its FAM state."""

import jax
import jax.numpy as jnp

from fam_jax import FamConfig, FamLM

cfg = FamConfig(vocab_size=259, num_layers=2, d_model=64, num_heads=4,
                num_kv_heads=2, mlp_dim=128, attention="fam", block_size=64,
                memory_segments=1, fam_length=8)
model = FamLM(cfg)
tokens = jax.random.randint(jax.random.PRNGKey(0), (2, 1000), 0, cfg.vocab_size)
variables = jax.jit(model.init)(jax.random.PRNGKey(1), tokens)
logits, fam = jax.jit(model.apply, static_argnames="return_fam_state")(
    variables, tokens, return_fam_state=True)
print("logits", logits.shape, "final FAM per layer", fam.shape)
# Continue the same text from its FAM (random state passing does this in training).
more = jax.random.randint(jax.random.PRNGKey(2), (2, 64), 0, cfg.vocab_size)
logits = model.apply(variables, more, fam_state=fam,
                     positions=jnp.broadcast_to(jnp.arange(1000, 1064), (2, 64)))
print("next block", logits.shape, "finite:", bool(jnp.isfinite(logits).all()))
