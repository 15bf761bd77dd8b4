"""examples/tool_use.py as shipped: a tiny model SFT'd on calculator demonstrations, then trained with GRPO in
a TextEnvironment, answers unseen multiplications far more often than the SFT model."""

from test_rest import load_example


def test_tool_use_example_raises_held_out_accuracy(tmp_path):
    result = load_example("tool_use").run(str(tmp_path))
    before, after = result["before"], result["after"]
    print(f"\nheld-out accuracy on {result['held_out']} unseen multiplications (temperature 0.7 / greedy): "
          f"{before['sampled']:.3f} / {before['greedy']:.3f} after SFT -> {after['sampled']:.3f} / "
          f"{after['greedy']:.3f} after GRPO; train reward, mean of every 5 steps: "
          + " ".join(f"{v:.2f}" for v in result["curve"]) + f"\nexample: {result['example']}")
    assert result["held_out"] >= 50
    assert after["sampled"] - before["sampled"] >= 0.3 and after["greedy"] - before["greedy"] >= 0.25
    assert "<call>calculator(" in result["example"] and "<result>" in result["example"]
