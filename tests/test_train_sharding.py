"""Training on a data=2 × fsdp=2 × tensor=2 mesh of 8 CPU devices computes what
one device computes: the same losses and parameters after 3 steps."""

import textwrap

from util import run_on_cpu_devices

_SCRIPT = textwrap.dedent("""
    import jax, numpy as np
    from flax import linen as nn
    from fam_jax import sharding
    from fam_jax.train import init as train_init, step as train_step
    from fam_jax.train.config import TrainConfig
    from fam_jax.train.optimizer import (OptimizerConfig, learning_rate_schedule,
                                         make_optimizer)
    from test_train_step import make_batch
    from util import rel_err, tiny_config

    assert len(jax.devices()) == 8
    cfg = tiny_config(attention="fam", block_size=8, memory_segments=1,
                      fam_length=4, lora_rank=4, mlp_dim=64, init_std=0.5)
    train_cfg = TrainConfig(batch_size=8, sequence_length=24, finetune="full",
                            train_steps=3, grad_accumulation_steps=2,
                            optimizer=OptimizerConfig(learning_rate=1e-3))
    optimizer = make_optimizer(train_cfg.optimizer, 3)
    batches = [make_batch(cfg, seed, batch=8, length=24) for seed in range(3)]

    def train(mesh):
      layout = train_init.make_layout(cfg, train_cfg, mesh, optimizer)
      params = train_init.complete_params(None, cfg, layout, seed=3)
      state = train_init.initial_state(params, cfg, train_cfg, optimizer,
                                       layout)
      mask = train_init.trainable_mask(params, train_cfg, cfg)
      with jax.set_mesh(mesh), nn.logical_axis_rules(
          sharding.LOGICAL_AXIS_RULES):
        step = jax.jit(train_step.make_train_step(
            cfg, train_cfg, optimizer, mask,
            learning_rate_schedule(train_cfg.optimizer, 3)),
            in_shardings=(layout.state, layout.batch),
            out_shardings=(layout.state, sharding.replicated(mesh)))
        losses = []
        for batch in batches:
          batch = {k: jax.device_put(v, layout.batch) for k, v in batch.items()}
          state, metrics = step(state, batch)
          losses.append(float(metrics["loss"]))
      return losses, state

    one_losses, one = train(sharding.make_mesh(devices=jax.devices()[:1]))
    mesh = sharding.make_mesh(data=2, fsdp=2, tensor=2)
    losses, state = train(mesh)
    q = state.params["layers"]["attention"]["q"]["kernel"]  # [L, D, H, E]
    assert q.sharding.spec == jax.sharding.PartitionSpec(
        None, "fsdp", "tensor", None), q.sharding.spec
    assert q.addressable_shards[0].data.shape == (2, 16, 2, 8)
    assert state.fam.sharding.spec[1] == ("data", "fsdp")
    print("losses", one_losses, losses)
    np.testing.assert_allclose(losses, one_losses, rtol=1e-5)
    errors = {jax.tree_util.keystr(path): rel_err(a, b) for (path, a), b in zip(
        jax.tree_util.tree_leaves_with_path(state.params),
        jax.tree_util.tree_leaves(one.params))}
    print("largest errors", sorted(errors.items(), key=lambda kv: -kv[1])[:3])
    worst = max(errors.values())
    print("worst parameter relative error", worst)
    assert worst < 1e-5
    assert rel_err(state.fam, one.fam) < 1e-5
    print("OK")
""")


def test_mesh_2x2x2_trains_like_one_device():
  run_on_cpu_devices(_SCRIPT, devices=8, timeout=1200)
