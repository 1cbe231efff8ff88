"""Logical axes shard the model over a (data, fsdp, tensor) mesh without changing it."""

import textwrap

import pytest

from fam_jax.sharding import make_mesh
from util import run_on_cpu_devices

_SCRIPT = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from flax import linen as nn
    from fam_jax import FamLM
    from fam_jax.sharding import LOGICAL_AXIS_RULES, make_mesh, param_shardings
    from util import random_tokens, rel_err, tiny_config

    assert len(jax.devices()) == 2
    cfg = tiny_config(attention="fam", block_size=4, fam_length=2, vocab_size=64,
                      num_kv_heads=2, lora_rank=2)
    model = FamLM(cfg)
    variables = jax.jit(model.init)(jax.random.PRNGKey(0),
                                    jnp.zeros((1, 1), jnp.int32))
    tokens = random_tokens(cfg, 2, 13)
    single = model.apply({"params": variables["params"]}, tokens)

    mesh = make_mesh(data=1, tensor=2)
    params = jax.device_put(variables["params"],
                            param_shardings(variables["params_axes"], mesh))
    gate = params["layers"]["mlp"]["gate"]["kernel"]
    assert gate.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", "tensor")
    assert len(gate.addressable_shards) == 2
    assert gate.addressable_shards[0].data.shape == (2, 32, 24)
    with nn.logical_axis_rules(LOGICAL_AXIS_RULES), jax.set_mesh(mesh):
      sharded = jax.jit(model.apply)({"params": params}, tokens)
    assert rel_err(sharded, single) < 1e-5, rel_err(sharded, single)
    print("OK")
""")


def test_two_way_model_parallel_forward_matches_single_device():
  run_on_cpu_devices(_SCRIPT, devices=2, timeout=600)


def test_mesh_needs_a_divisor_of_the_devices():
  with pytest.raises(ValueError, match="tensor=0"):
    make_mesh(tensor=0)
  with pytest.raises(ValueError, match="fsdp=3 × tensor=1 does not divide"):
    make_mesh(fsdp=3, devices=[object()] * 4)
  with pytest.raises(ValueError, match="data=2 × fsdp=1 × tensor=1 = 2 devices, "
                     "but there are 4"):
    make_mesh(data=2, devices=[object()] * 4)
