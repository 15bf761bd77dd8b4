"""`posttrain demo`: a reduced run end to end, and a stage whose inputs are missing."""

from posttrain.cli import main


def test_reduced_demo_runs_every_stage(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--output_dir", str(out), "--model", "tiny:llama", "--steps", "8", "--quick"]) == 0
    text = capsys.readouterr().out
    for stage in ("sft", "reward", "dpo"):
        assert f"== stage {stage} ==" in text
        assert (out / stage / "model.safetensors").exists() and (out / stage / "README.md").exists()
    assert "eval_accuracy" in text and "eval_rewards/accuracy" in text


def test_a_stage_without_its_inputs_says_what_to_run_first(tmp_path, capsys):
    assert main(["demo", "--output_dir", str(tmp_path), "--stage", "dpo", "--quick"]) == 1
    assert "Run first: posttrain demo --stage sft" in capsys.readouterr().out
