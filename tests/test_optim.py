"""Schedules follow the global step; tower optimizers are independent; clipping is per tower."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import common
from jimte import optim


def test_step_schedule_drops_by_factor_at_epoch():
  cfg = common.optim_config()
  cfg.decay_epoch, cfg.decay_factor = 2.0, 0.1
  sched = optim.make_schedule(cfg, steps_per_epoch=10, total_steps=50)
  assert float(sched(19)) == pytest.approx(1e-4)
  assert float(sched(20)) == pytest.approx(1e-5)


def test_paper_config_follows_the_release_schedule():
  """misc/config.py: 35 epochs, StepLR(lr_drop=20, gamma=0.1) per epoch (epochs of ITM steps)."""
  from configs import joimternet_paper

  c = joimternet_paper.get_config()
  assert c.num_epochs == 35 and c.optim.learning_rate == 1e-4
  assert c.loss.mixture and c.loss.itm_probability == 0.3
  sched = optim.make_schedule(c.optim, steps_per_epoch=7, total_steps=35 * 7)
  assert [float(sched(s)) for s in (0, 20 * 7 - 1)] == pytest.approx([1e-4, 1e-4])
  assert [float(sched(s)) for s in (20 * 7, 35 * 7 - 1)] == pytest.approx([1e-5, 1e-5])


def test_warmup_cosine_schedule():
  cfg = common.optim_config()
  cfg.schedule, cfg.warmup_epochs, cfg.learning_rate = "warmup_cosine", 1.0, 1e-3
  sched = optim.make_schedule(cfg, steps_per_epoch=10, total_steps=100)
  assert float(sched(0)) == 0.0
  assert float(sched(10)) == pytest.approx(1e-3)
  assert float(sched(100)) == pytest.approx(0.0, abs=1e-9)
  assert float(sched(55)) == pytest.approx(0.5e-3, rel=1e-3)


def test_unknown_schedule_names_the_key():
  cfg = common.optim_config()
  cfg.schedule = "linear"
  with pytest.raises(ValueError, match="config.optim.schedule"):
    optim.make_schedule(cfg, 10, 100)


def test_injected_learning_rate_is_used_and_clipping_is_per_tower():
  cfg = common.optim_config()
  cfg.weight_decay = 0.0
  tx = optim.make_tower_optimizer(cfg)
  params = {"w": jnp.ones((3, 3))}
  state = tx.init(params)
  huge = {"w": jnp.full((3, 3), 1e6)}
  new_params, state = optim.apply_tower_update(tx, state, params, huge, 0.5)
  # Adam's first step moves each weight by ~lr regardless of the gradient's scale.
  np.testing.assert_allclose(np.asarray(new_params["w"]), 0.5, atol=1e-3)
  # Clipping to 1.5 happened before Adam: the first moment holds the clipped gradient.
  mu = jax.tree.leaves(state.inner_state[1][0].mu)[0]
  assert float(optax.tree.norm(mu / (1 - cfg.b1))) == pytest.approx(1.5, rel=1e-4)


def test_weight_decay_skips_vectors():
  cfg = common.optim_config()
  cfg.weight_decay = 0.5
  tx = optim.make_tower_optimizer(cfg)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  new, _ = optim.apply_tower_update(tx, tx.init(params), params, zeros, 0.1)
  assert float(new["bias"][0]) == pytest.approx(1.0)
  assert float(new["kernel"][0, 0]) == pytest.approx(1.0 - 0.1 * 0.5)


def test_decay_all_decays_vectors_too_and_is_the_paper_configs():
  from configs import joimternet_paper

  cfg = common.optim_config()
  cfg.update(weight_decay=0.5, decay_all=True)
  tx = optim.make_tower_optimizer(cfg)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
  zeros = jax.tree.map(jnp.zeros_like, params)
  new, _ = optim.apply_tower_update(tx, tx.init(params), params, zeros, 0.1)
  assert float(new["bias"][0]) == pytest.approx(1.0 - 0.1 * 0.5)
  assert float(new["kernel"][0, 0]) == pytest.approx(1.0 - 0.1 * 0.5)
  assert joimternet_paper.get_config().optim.decay_all
  assert not common.optim_config().decay_all
