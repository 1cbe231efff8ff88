"""A `lax.scan` whose parameter gradients are computed once, for all steps.

Differentiating `lax.scan(lambda c, x: step(params, c, x), ...)` the usual way
adds every step's parameter gradient into the backward scan's carry: for the
FAM scan that is all of a layer's weight gradients, for 64 rows, once per
block. `scan` gets the same numbers in another order:

1. forward: the plain scan, keeping each step's input carry;
2. backward, sequential: a reverse scan through each step's vector-Jacobian
   product with respect to its input carry only (the FAM chain), recording the
   cotangent of each step's outputs;
3. backward, batched: one VJP of all steps at once (`vmap` over the steps)
   with respect to the parameters and the scanned inputs, fed those recorded
   cotangents, so each parameter gradient is one product over all steps' rows.

Steps 2 and 3 each recompute the forward step, as remat would. Carry and
inputs may hold integer or boolean arrays; those get no gradient.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def scan(step, params, carry, xs, *, unroll: int = 1, batched: bool = True):
  """`lax.scan(lambda c, x: step(params, c, x), carry, xs, unroll=unroll)`;
  its gradient as above when `batched`, else autodiff's own."""
  if not batched:
    return jax.lax.scan(lambda c, x: step(params, c, x), carry, xs,
                        unroll=unroll)
  return _scan(step, unroll, params, carry, xs)


class _Floats:
  """The floating-point leaves of trees shaped like `example`, taken out and
  put back (integer and boolean leaves stay behind: they have no gradient)."""

  def __init__(self, example):
    leaves, self.treedef = jax.tree_util.tree_flatten(example)
    self.is_float = [jnp.issubdtype(x.dtype, jnp.inexact) for x in leaves]

  def take(self, tree) -> list:
    return [x for x, f in zip(self.treedef.flatten_up_to(tree), self.is_float)
            if f]

  def others(self, tree) -> list:
    return [x for x, f in zip(self.treedef.flatten_up_to(tree), self.is_float)
            if not f]

  def put(self, floats, others):
    floats, others = iter(floats), iter(others)
    return self.treedef.unflatten(
        [next(floats) if f else next(others) for f in self.is_float])

  def cotangent(self, floats, like):
    """`floats` in place, float0 zeros (no gradient) for the other leaves."""
    zeros = [np.zeros(np.shape(x), jax.dtypes.float0) for x in self.others(like)]
    return self.put(floats, zeros)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _scan(step, unroll, params, carry, xs):
  return jax.lax.scan(lambda c, x: step(params, c, x), carry, xs, unroll=unroll)


def _scan_fwd(step, unroll, params, carry, xs):
  def body(c, x):
    c_out, y = step(params, c, x)
    return c_out, (y, c)
  final, (ys, carries_in) = jax.lax.scan(body, carry, xs, unroll=unroll)
  return (final, ys), (params, carries_in, xs)


def _scan_bwd(step, unroll, saved, cotangents):
  params, carries_in, xs = saved
  ct_final, ct_ys = cotangents
  # Integer and boolean outputs come with float0 cotangents: the cotangents
  # tell which leaves are floats.
  carry_floats, y_floats = _Floats(ct_final), _Floats(ct_ys)
  x_floats = _Floats(xs)

  # 2. Through the carry chain, last step first. A step's float outputs are
  # its carry's floats, then its output's.
  def back(ct_carry_out, inputs):
    c_in, x, ct_y = inputs
    c_other = carry_floats.others(c_in)

    def floats_out(c_float):
      c_out, y = step(params, carry_floats.put(c_float, c_other), x)
      return carry_floats.take(c_out) + y_floats.take(y)

    _, vjp = jax.vjp(floats_out, carry_floats.take(c_in))
    ct_out = list(ct_carry_out) + list(ct_y)
    (ct_carry_in,) = vjp(ct_out)
    return ct_carry_in, ct_out

  ct_carry, ct_outs = jax.lax.scan(
      back, carry_floats.take(ct_final),
      (carries_in, xs, y_floats.take(ct_ys)), reverse=True, unroll=unroll)

  # 3. All steps at once, for the parameters and the scanned inputs.
  def all_steps(p, x_float):
    x = x_floats.put(x_float, x_floats.others(xs))
    c_out, y = jax.vmap(step, (None, 0, 0))(p, carries_in, x)
    return carry_floats.take(c_out) + y_floats.take(y)

  _, vjp = jax.vjp(all_steps, params, x_floats.take(xs))
  ct_params, ct_x = vjp(ct_outs)
  return (ct_params, carry_floats.cotangent(ct_carry, ct_final),
          x_floats.cotangent(ct_x, xs))


_scan.defvjp(_scan_fwd, _scan_bwd)
