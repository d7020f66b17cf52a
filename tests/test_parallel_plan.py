"""The plan's pipeline-bubble formula, and a preset's layout divided down for a tiny CPU launch."""

from __future__ import annotations

import pytest

from mai_models.errors import MaiUserError
from mai_models.lm.model_config import ParallelConfig
from mai_models.lm.plan_launch import smallest_world, tiny_layout
from mai_models.lm.presets import PRESETS
from mai_models.lm.sizing import parallel_plan, pipeline_bubble_fraction


def test_bubble_fraction_follows_the_1f1b_formula() -> None:
    assert pipeline_bubble_fraction(1, 8) == 0.0
    assert pipeline_bubble_fraction(8, 16) == pytest.approx(7 / 23)  # mai-1-like: 30.4%
    # Interleaving v chunks per rank divides the bubble's length by v.
    assert pipeline_bubble_fraction(4, 8, virtual_stages=2) == pytest.approx(3 / 19)


def test_mai_1_like_plan_reports_bubble_and_memory() -> None:
    preset = PRESETS["mai-1-like"]
    plan = parallel_plan(preset.model, preset.parallel, preset.world_size, 1, global_batch=3840)
    assert "pipeline bubble   30.4%" in plan and "m=16 micro-batches" in plan
    assert "weights" in plan and "optimizer" in plan and "activations" in plan


def test_mai_1_like_shape_divides_down_to_eight_processes() -> None:
    layout = tiny_layout(PRESETS["mai-1-like"].parallel, 8)
    assert (layout.tp, layout.pp, layout.ep) == (2, 2, 2)
    assert smallest_world(2, 2, 2) == 8  # DP=2: TP x DP must hold EP x expert-TP = 4
    layout.validate(8, PRESETS["tiny"].model)


def test_virtual_stages_need_layers_for_every_chunk() -> None:
    parallel = ParallelConfig(pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2)
    with pytest.raises(MaiUserError, match="not divisible by PP x virtual stages = 4"):
        parallel.validate(2, PRESETS["tiny"].model)  # 2 layers
    parallel.validate(2, PRESETS["tiny"].model.model_copy(update={"num_layers": 4}))
