"""GRPOConfig and RLOOConfig take every TRL 1.16 field, so a TRL script or YAML loads unchanged; a field
posttrain does not implement is refused when set, never silently ignored."""

import dataclasses

import pytest

from posttrain import GRPOConfig, RLOOConfig


@pytest.mark.parametrize("ours_cls, name", [(GRPOConfig, "GRPOConfig"), (RLOOConfig, "RLOOConfig")])
def test_every_trl_field_exists_with_help(tmp_path, ours_cls, name):
    trl = pytest.importorskip("trl")
    ours = {f.name: f for f in dataclasses.fields(ours_cls)}
    for f in dataclasses.fields(getattr(trl, name)):
        assert f.name in ours, f"TRL's {name}.{f.name} is missing"
        assert ours[f.name].metadata.get("help"), f"{name}.{f.name} has no help text"


@pytest.mark.parametrize("cls, field, value", [(GRPOConfig, "use_vllm", True), (GRPOConfig, "entropy_coef", 0.1),
                                               (GRPOConfig, "log_completions", True),
                                               (RLOOConfig, "reward_clip_range", [0.0, 1.0]),
                                               (RLOOConfig, "mask_truncated_completions", True)])
def test_unimplemented_trl_fields_are_refused(tmp_path, cls, field, value):
    with pytest.raises(ValueError, match=f"{cls.__name__}.{field}=.*not implemented in posttrain"):
        cls(output_dir=str(tmp_path), **{field: value})
    assert getattr(cls(output_dir=str(tmp_path)), field) != value  # the default is accepted


def test_model_init_kwargs_load_a_named_model_in_that_dtype(tmp_path):
    import torch

    from posttrain import GRPOTrainer

    args = GRPOConfig(output_dir=str(tmp_path), model_init_kwargs='{"dtype": "bfloat16"}', num_generations=2,
                      per_device_train_batch_size=2, max_steps=1)
    trainer = GRPOTrainer("tiny:llama", reward_funcs=lambda completions, **kw: [0.0] * len(completions), args=args,
                          train_dataset=[{"prompt": "Hi"}, {"prompt": "Yo"}])
    assert next(trainer.model.parameters()).dtype == torch.bfloat16
