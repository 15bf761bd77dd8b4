"""Gradient (activation) checkpointing in every trainer, offline (transformers.Trainer turns it on from
``gradient_checkpointing``) and online (``OnlineTrainer`` turns it on itself), with LoRA and PPO's value head:
the same losses and gradients as without it, less activation memory, and sampling that keeps its KV cache.

Activation memory is measured as what autograd keeps for the backward: the distinct storages packed through
``torch.autograd.graph.saved_tensors_hooks`` during a micro-batch's forward (weights and buffers excluded; they
are not activations), plus the tensors a checkpointed layer keeps to recompute itself (its inputs, and the
keyword tensors of the call: masks, rotary embeddings). Everything packed stays alive until that micro-batch's
backward, so the sum is the peak of saved activations, measured exactly and deterministically on any device.
Inside a checkpointed layer torch packs placeholders instead of tensors, so a checkpointed run counts only the
layer boundaries and what lies outside the layers."""

import functools
import statistics
import time

import peft
import pytest
import torch
from torch.utils._pytree import tree_leaves
from transformers import TrainerCallback

from posttrain import (DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, KTOConfig, KTOTrainer, PPOConfig, PPOTrainer,
                       ReSTConfig, ReSTTrainer, RewardConfig, RewardTrainer, RLOOConfig, RLOOTrainer, SFTConfig,
                       SFTTrainer, load_model)
from posttrain.data import toy
from posttrain.data.tokenize import tokenize_prompt
from posttrain.models.loading import add_adapter
from posttrain.models.value_head import AutoModelForCausalLMWithValueHead
from posttrain.rollout import PolicySampler, SamplingConfig
from posttrain.trainers.online import enable_activation_checkpointing

from data_helpers import runs_agree

TOLERANCE = dict(rtol=1e-5, atol=1e-6)  # float32 on the CPU (an accelerator gets data_helpers' run-to-run tolerance)


# ---- measuring a run ----------------------------------------------------------------------------------------
class SavedActivations:
    """The bytes autograd keeps for the backward (see the module docstring): ``watch(model)`` once checkpointing
    is on, then forwards inside ``with meter:``; ``take()`` returns the bytes saved since the last ``take()``."""

    def __init__(self):
        self.checkpointed_calls, self.paused, self._live, self._excluded, self._wrapped = 0, False, {}, set(), []

    def watch(self, model) -> None:
        model = getattr(model, "module", model)
        self._excluded = {t.untyped_storage().data_ptr() for t in [*model.parameters(), *model.buffers()]}
        for module in model.modules():
            checkpoint = module.__dict__.get("_gradient_checkpointing_func")
            if checkpoint is not None:
                module._gradient_checkpointing_func = functools.partial(self._checkpoint, checkpoint)
                self._wrapped.append((module, checkpoint))

    def unwatch(self) -> None:
        for module, checkpoint in self._wrapped:
            module._gradient_checkpointing_func = checkpoint
        self._wrapped = []

    def take(self) -> int:
        saved, self._live = sum(self._live.values()), {}
        return saved

    def _add(self, tensor) -> None:
        if not self.paused and isinstance(tensor, torch.Tensor) and tensor.device.type != "meta":
            storage = tensor.untyped_storage()
            if storage.data_ptr() not in self._excluded:
                self._live[storage.data_ptr()] = storage.nbytes()

    def _pack(self, tensor):
        self._add(tensor)
        return tensor

    def _checkpoint(self, checkpoint, function, *args, **kwargs):
        """A checkpointed layer keeps its inputs and the tensors of its call (``partial`` keywords) alive."""
        self.checkpointed_calls += torch.is_grad_enabled()
        for tensor in tree_leaves((args, getattr(function, "keywords", {}))):
            self._add(tensor)
        return checkpoint(function, *args, **kwargs)

    def __enter__(self):
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda tensor: tensor)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self._hooks.__exit__(*exc)


class StepRecorder(TrainerCallback):
    """Per optimizer step of a run: the losses handed to ``accelerator.backward``, the gradients just before the
    optimizer step, the peak bytes saved for the backward over the step's micro-batches (``SavedActivations``,
    taken at each backward) and the step's wall and CPU time (this process's: less disturbed by other jobs). Use as ``with StepRecorder(trainer) as r: trainer.train()``."""

    def __init__(self, trainer):
        self.losses, self.grads, self.saved, self.times, self.cpu_times = [], [], [], [], []
        self.meter, self._peak, self._start = SavedActivations(), 0, None
        backward = trainer.accelerator.backward

        def recording_backward(loss, **kwargs):
            self.losses.append(loss.detach().clone())
            self._peak = max(self._peak, self.meter.take())
            self.meter.paused = True  # a reentrant recomputation in the backward is no forward
            try:
                return backward(loss, **kwargs)
            finally:
                self.meter.paused = False

        trainer.accelerator.backward = recording_backward
        trainer.add_callback(self)

    @property
    def checkpointed_calls(self) -> int:
        return self.meter.checkpointed_calls

    def __enter__(self):
        self.meter.__enter__()
        return self

    def __exit__(self, *exc):
        self.meter.__exit__(*exc)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.meter.watch(model)  # checkpointing is on by now (transformers.Trainer turns it on in train())

    def on_train_end(self, args, state, control, **kwargs):
        self.meter.unwatch()

    def on_step_begin(self, args, state, control, **kwargs):
        self._start = time.perf_counter(), time.process_time()

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        self.grads.append({name: None if p.grad is None else p.grad.detach().clone()
                           for name, p in model.named_parameters() if p.requires_grad})

    def on_step_end(self, args, state, control, **kwargs):
        if self._start is not None:
            self.times.append(time.perf_counter() - self._start[0])
            self.cpu_times.append(time.process_time() - self._start[1])
        self.saved.append(self._peak)
        self._peak, self._start = 0, None


# ---- the trainers ---------------------------------------------------------------------------------------------
def varied(completions, **kwargs):
    """A deterministic reward that differs between completions (so advantages are not all 0)."""
    return [float(sum(map(ord, c)) % 7) for c in completions]


def unpaired(n, seed=0):
    return [{"prompt": p["prompt"], "completion": p["chosen"] if i % 2 else p["rejected"], "label": bool(i % 2)}
            for i, p in enumerate(toy.preference_pairs(n, seed=seed))]


def lora(task="CAUSAL_LM"):
    return peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", task_type=task)


COMMON = dict(max_steps=2, learning_rate=1e-3, max_grad_norm=0.0, logging_steps=1, save_strategy="no",
              disable_tqdm=True, report_to="none", seed=0, lr_scheduler_type="constant", bf16=False)
OFFLINE = dict(COMMON, per_device_train_batch_size=4, max_length=64)
ONLINE = dict(COMMON, max_completion_length=6)


def build(method, tmp_path, checkpointing, peft_config=None, model="tiny:llama", **kw):
    """A trainer of ``method`` on toy data; ``checkpointing`` None leaves gradient_checkpointing at its default (off),
    a dict turns it on with those gradient_checkpointing_kwargs ({} for the default kwargs)."""
    on = {} if checkpointing is None else dict(gradient_checkpointing=True,
                                               **({"gradient_checkpointing_kwargs": checkpointing} if checkpointing else {}))
    out = dict(output_dir=str(tmp_path / f"{method}-{checkpointing is not None}"))
    if method == "sft":
        return SFTTrainer(model, SFTConfig(**{**OFFLINE, **out, **on, **kw}), train_dataset=toy.prompt_completion(8),
                          peft_config=peft_config)
    if method == "reward":
        return RewardTrainer(model, RewardConfig(**{**OFFLINE, **out, **on, **kw}), train_dataset=toy.preference_pairs(8),
                             peft_config=peft_config and lora("SEQ_CLS"))
    if method == "dpo":
        return DPOTrainer(model, args=DPOConfig(**{**OFFLINE, **out, **on, "reference_cache_dir": str(tmp_path / "cache"),
                                                   **kw}),
                          train_dataset=toy.preference_pairs(8), peft_config=peft_config)
    if method == "kto":
        return KTOTrainer(model, args=KTOConfig(**{**OFFLINE, **out, **on, **kw}), train_dataset=unpaired(8),
                          peft_config=peft_config)
    prompts = toy.arithmetic_problems(8, seed=0)
    if method == "grpo":  # beta > 0: a reference (a frozen copy, or the adapter switched off with LoRA) too
        args = GRPOConfig(**{**ONLINE, **out, **on, "num_generations": 4, "per_device_train_batch_size": 8,
                             "beta": 0.1, **kw})
        return GRPOTrainer(model, varied, args=args, train_dataset=prompts, peft_config=peft_config)
    if method == "ppo":
        args = PPOConfig(**{**ONLINE, **out, **on, "per_device_train_batch_size": 4, "num_iterations": 1, **kw})
        return PPOTrainer(model, varied, args=args, train_dataset=prompts, peft_config=peft_config)
    if method == "rloo":
        args = RLOOConfig(**{**ONLINE, **out, **on, "num_generations": 4, "per_device_train_batch_size": 8, **kw})
        return RLOOTrainer(model, varied, args=args, train_dataset=prompts, peft_config=peft_config)
    if method == "rest":  # one Grow and one Improve step, every sample kept
        args = ReSTConfig(**{**ONLINE, **out, **on, "max_steps": -1, "grow_steps": 1, "improve_steps": 1,
                             "num_generations": 2, "thresholds": [-1.0], "num_iterations": 2,
                             "per_device_train_batch_size": 4, **kw})
        return ReSTTrainer(model, varied, args=args, train_dataset=prompts[:4], peft_config=peft_config)
    raise ValueError(method)


def run(method, tmp_path, checkpointing, peft_config=None, **kw):
    trainer = build(method, tmp_path, checkpointing, peft_config, **kw)
    with StepRecorder(trainer) as recorder:
        trainer.train()
    return trainer, recorder


def model_of(trainer):
    model = trainer.accelerator.unwrap_model(trainer.model)
    return getattr(model, "pretrained_model", model)


def layer_checkpointing(trainer):
    """``(flags, kwargs)``: each decoder layer's checkpointing flag and the keywords of its checkpoint function."""
    layers = [m for m in model_of(trainer).modules() if type(m).__name__.endswith("DecoderLayer")]
    return [m.gradient_checkpointing for m in layers], getattr(layers[0]._gradient_checkpointing_func, "keywords", None)


METHODS = ["sft", "reward", "dpo", "kto", "grpo", "ppo", "rloo", "rest"]
# (adapter, gradient_checkpointing_kwargs): full fine-tuning with the default (non-reentrant) checkpointing; LoRA
# with reentrant checkpointing, which gets no gradient through a layer unless its input requires grad (frozen
# embeddings: transformers' enable_input_require_grads); LoRA with the default.
MODES = [("full", {}), ("lora", {"use_reentrant": True})]
MODES_EXTRA = [("lora", {})]


@pytest.mark.parametrize("method, adapter, kwargs", [(m, a, k) for m in METHODS for a, k in MODES]
                         + [(m, a, k) for m in ("sft", "grpo", "ppo") for a, k in MODES_EXTRA])
def test_checkpointing_gives_the_same_losses_and_gradients(method, adapter, kwargs, tmp_path):
    """Two optimizer steps with and without checkpointing: the same loss of every micro-batch and the same gradient
    of every trainable weight at both steps (the second step's after one update, and for the online methods from
    a second generation sampled by the updated policy), float32 with dropout off."""
    plain, plain_rec = run(method, tmp_path / "plain", None, lora() if adapter == "lora" else None)
    ckpt, ckpt_rec = run(method, tmp_path / "ckpt", kwargs, lora() if adapter == "lora" else None)

    assert not model_of(plain).is_activation_checkpointing and plain_rec.checkpointed_calls == 0  # off by default
    assert model_of(ckpt).is_activation_checkpointing and ckpt_rec.checkpointed_calls > 0
    flags, keywords = layer_checkpointing(ckpt)
    assert all(flags) and keywords == {"use_reentrant": kwargs.get("use_reentrant", False)}  # non-reentrant default

    assert len(plain_rec.losses) == len(ckpt_rec.losses) > 0
    for a, b in zip(plain_rec.losses, ckpt_rec.losses):
        assert runs_agree(a, b, **TOLERANCE), (a.item(), b.item())
    assert len(plain_rec.grads) == len(ckpt_rec.grads) >= 2
    for step, (a, b) in enumerate(zip(plain_rec.grads, ckpt_rec.grads)):
        assert a.keys() == b.keys()
        for name in a:
            assert (a[name] is None) == (b[name] is None), name
            if a[name] is not None:
                assert runs_agree(a[name], b[name], **TOLERANCE), \
                    f"step {step} {name}: max |difference| {(a[name] - b[name]).abs().max().item():.3g}"
        # every trainable weight inside the checkpointed layers got a gradient (reentrant + LoRA needs input grads)
        in_layers = {n: g for n, g in b.items() if ".layers." in n}
        assert in_layers and all(g is not None for g in in_layers.values()), \
            [n for n, g in in_layers.items() if g is None][:3]
        assert sum(g.abs().sum() for g in in_layers.values()) > 0
    assert sum(ckpt_rec.saved) < sum(plain_rec.saved)  # less kept for the backward, even with 2 layers
    if adapter == "lora":
        assert all(".lora_" in n or "v_head" in n or "score" in n for n in ckpt_rec.grads[0]), \
            "only the adapter (and a head) trains"


# ---- memory ---------------------------------------------------------------------------------------------------
def long_rows(n, seed=0, sentences=6):
    """Prompt-completion rows of ~100 tokens (several reviews), so activations are worth checkpointing."""
    corpus = toy.review_corpus(n * sentences, seed=seed)
    return [{"prompt": corpus[i * sentences], "completion": " " + " ".join(corpus[i * sentences + 1:(i + 1) * sentences])}
            for i in range(n)]


def long_pairs(n, seed=0):
    rows = long_rows(2 * n, seed)
    return [{"prompt": rows[2 * i]["prompt"], "chosen": rows[2 * i]["completion"],
             "rejected": rows[2 * i + 1]["completion"]} for i in range(n)]


def memory_trainer(method, tmp_path, checkpointing, model, batch=4, completion_length=32, steps=1, **kw):
    out = dict(output_dir=str(tmp_path / f"{method}-{checkpointing is not None}"), max_steps=steps,
               per_device_train_batch_size=batch)
    on = {} if checkpointing is None else dict(gradient_checkpointing=True)
    if method == "sft":
        return SFTTrainer(model, SFTConfig(**{**OFFLINE, **out, **on, "max_length": 256, **kw}),
                          train_dataset=long_rows(batch * steps))
    if method == "dpo":
        return DPOTrainer(model, args=DPOConfig(**{**OFFLINE, **out, **on, "max_length": 256,
                                                   "reference_cache_dir": str(tmp_path / "cache"), **kw}),
                          train_dataset=long_pairs(batch * steps))
    if method == "grpo":  # completions of completion_length tokens (a fresh model rarely ends early)
        args = GRPOConfig(**{**ONLINE, **out, **on, "num_generations": 4, "max_completion_length": completion_length,
                             "beta": 0.0, **kw})
        return GRPOTrainer(model, varied, args=args, train_dataset=toy.review_prompts(batch * steps // 4, seed=0))
    if method == "ppo":
        args = PPOConfig(**{**ONLINE, **out, **on, "num_iterations": 1, "max_completion_length": completion_length, **kw})
        return PPOTrainer(model, varied, args=args, train_dataset=toy.review_prompts(batch * steps, seed=0))
    raise ValueError(method)


def measure(method, tmp_path, checkpointing, model, **kw):
    trainer = memory_trainer(method, tmp_path, checkpointing, model, **kw)
    with StepRecorder(trainer) as recorder:
        trainer.train()
    return recorder


@pytest.mark.parametrize("method", ["sft", "dpo", "grpo", "ppo"])
def test_checkpointing_saves_less_activation_memory(method, tmp_path):
    """On a 6-layer model (tiny:llama-5m), checkpointing keeps well under 60% of the bytes saved for the backward."""
    plain = measure(method, tmp_path, None, "tiny:llama-5m")
    ckpt = measure(method, tmp_path, {}, "tiny:llama-5m")
    assert plain.checkpointed_calls == 0 and ckpt.checkpointed_calls > 0
    ratio = max(ckpt.saved) / max(plain.saved)
    print(f"{method}: saved for backward {max(plain.saved) / 2**20:.2f} MiB -> {max(ckpt.saved) / 2**20:.2f} MiB "
          f"with checkpointing ({ratio:.0%})")
    assert ratio < 0.6


def test_memory_measure_counts_what_the_backward_needs():
    """The measure itself, on a bare 2-layer model: without checkpointing every activation a layer saves, with it
    only the layer boundaries (and what lies outside the layers); nothing under no_grad."""
    results = {}
    for checkpointing in (False, True):
        model = load_model("tiny:llama", seed=0).train()
        if checkpointing:
            enable_activation_checkpointing(model)
        ids = torch.randint(0, model.config.vocab_size, (2, 16), generator=torch.Generator().manual_seed(0))
        meter = SavedActivations()
        meter.watch(model)
        with meter:
            with torch.no_grad():
                model(input_ids=ids, use_cache=False)
            assert meter.take() == 0
            out = model(input_ids=ids, use_cache=False)
        results[checkpointing] = (meter.take(), meter.checkpointed_calls)
        out.logits.sum().backward()
    (plain, plain_calls), (ckpt, ckpt_calls) = results[False], results[True]
    assert plain_calls == 0 and ckpt_calls == 2
    hidden = 2 * 16 * 64 * 4  # bytes of one [2, 16, 64] float32 hidden state
    assert ckpt >= 2 * hidden  # both layers' inputs are kept
    assert plain - ckpt > 2 * 10 * hidden  # each layer saves more than 10 hidden-sized tensors inside


# ---- sampling while checkpointing is on -------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["posttrain", "transformers"])
@pytest.mark.parametrize("kind", ["lm", "value-head", "lora"])
def test_sampling_keeps_its_kv_cache_under_checkpointing(tokenizer, backend, kind):
    """Sampling from a policy in training mode with checkpointing on (as the online trainers hold it) draws the
    same tokens, log-probs (and values) as without, and runs the model over the same number of tokens: the KV cache
    is used (posttrain's decoding loop would draw other tokens without it; generate would be slower)."""
    prompts = [tokenize_prompt(tokenizer, p) for p in ["Honestly, the film", "Five", "Five", "7+12="]]
    results = []
    for checkpointing in (False, True):
        if kind == "value-head":
            model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", seed=0)
        else:
            model = load_model("tiny:llama", seed=0)
            model = add_adapter(model, lora(), seed=0) if kind == "lora" else model
        if checkpointing:
            enable_activation_checkpointing(model)
        model.train()
        embedded = []
        embeddings = getattr(model, "pretrained_model", model).get_input_embeddings()
        embeddings.register_forward_hook(lambda module, args, output: embedded.append(args[0].numel()))
        sampler = PolicySampler(tokenizer, SamplingConfig(max_new_tokens=8, temperature=1.0), backend=backend)
        torch.manual_seed(0)
        rollout = sampler(model, prompts, with_logprobs="if_free" if kind == "value-head" else True)
        assert model.training  # given back in training mode
        results.append((rollout, sum(embedded), len(embedded)))
    (plain, plain_tokens, plain_calls), (ckpt, ckpt_tokens, ckpt_calls) = results
    assert torch.equal(plain.completion_ids, ckpt.completion_ids)
    for a, b in ((plain.logprobs, ckpt.logprobs), (plain.values, ckpt.values)):
        assert (a is None) == (b is None) and (a is None or runs_agree(a, b, **TOLERANCE))
    if kind == "value-head" and backend == "posttrain":
        assert ckpt.values is not None  # values from the sampling step, as PPO takes them
    assert (ckpt_tokens, ckpt_calls) == (plain_tokens, plain_calls)
    # with the cache: the (padded) prompts once, one token per row per step, and for generate one forward over the
    # finished rows for the log-probs; without it generate would feed each row's whole sequence at every step
    rows, prompt_width, completion_width = len(prompts), plain.prompt_ids.shape[1], plain.completion_ids.shape[1]
    assert plain_tokens <= rows * prompt_width + rows * 8 + rows * (prompt_width + completion_width)


# ---- settings -------------------------------------------------------------------------------------------------
def test_checkpointing_is_off_by_default_and_every_n_layers_reaches_online_trainers(tmp_path):
    assert not SFTConfig(output_dir=str(tmp_path)).gradient_checkpointing
    assert not GRPOConfig(output_dir=str(tmp_path)).gradient_checkpointing
    # transformers' every_n_layers (taken out of the kwargs, as transformers.Trainer does; torch's checkpoint
    # would refuse it), on the 2-layer model: the first layer checkpointed, the second not
    trainer, recorder = run("grpo", tmp_path, {"every_n_layers": 2}, max_steps=1)
    flags, keywords = layer_checkpointing(trainer)
    assert flags == [True, False] and keywords == {"use_reentrant": False}
    assert recorder.checkpointed_calls > 0 and recorder.losses


def test_value_head_checkpointing_switches_its_trunk():
    model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", peft_config=lora(), seed=0)
    assert not model.is_activation_checkpointing
    model.gradient_checkpointing_enable()
    assert model.is_activation_checkpointing
    model.activation_checkpointing_disable()
    assert not model.is_activation_checkpointing
    model.activation_checkpointing_enable({"use_reentrant": True}, every_n_layers=2)
    trunk_layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    assert [m.gradient_checkpointing for m in trunk_layers] == [True, False]


def test_activation_offloading_is_still_refused(tmp_path):
    for config in (SFTConfig, DPOConfig, KTOConfig, RewardConfig):
        with pytest.raises(ValueError, match="activation_offloading=True: this TRL option is not implemented"):
            config(output_dir=str(tmp_path), activation_offloading=True)


# ---- a benchmark: numbers for the issue (slow; run with -m slow -s) -------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("size, steps", [("5m", 6), ("50m", 4)])
def test_benchmark_checkpointing(size, steps, tmp_path):
    """Peak bytes saved for the backward and the median step time (forward, backward and optimizer step; sampling
    excluded; the first step left out), with and without checkpointing, for SFT, DPO and GRPO on tiny:llama-<size>.
    CPU time is this process's (one thread): on a shared machine it is steadier than wall time."""
    model = f"tiny:llama-{size}"
    print(f"\n| {model} | saved (plain) | saved (ckpt) | ratio | wall s/step plain -> ckpt | CPU s/step plain -> ckpt "
          "| CPU slowdown |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for method, kw in (("sft", dict(batch=8)), ("dpo", dict(batch=4)), ("grpo", dict(batch=16, completion_length=64))):
        plain = measure(method, tmp_path / "plain", None, model, steps=steps, **kw)
        ckpt = measure(method, tmp_path / "ckpt", {}, model, steps=steps, **kw)
        wall = [statistics.median(r.times[1:]) for r in (plain, ckpt)]
        cpu = [statistics.median(r.cpu_times[1:]) for r in (plain, ckpt)]
        print(f"| {method} | {max(plain.saved) / 2**20:.1f} MiB | {max(ckpt.saved) / 2**20:.1f} MiB | "
              f"{max(ckpt.saved) / max(plain.saved):.0%} | {wall[0]:.3f} -> {wall[1]:.3f} | {cpu[0]:.3f} -> {cpu[1]:.3f} "
              f"| {cpu[1] / cpu[0]:.2f}x |")
        assert max(ckpt.saved) < max(plain.saved)


def test_value_head_lora_adapter_is_drawn_from_the_seed():
    """PPOTrainer(..., peft_config=...) builds its LoRA policy in AutoModelForCausalLMWithValueHead.from_pretrained:
    the adapter must come from ``seed`` (as ``add_adapter`` draws it for the other trainers), not from wherever the
    global RNG happens to be -- else two PPO+LoRA runs with one seed differ (found comparing them here)."""
    adapters = []
    for draws in (0, 3):
        torch.rand(draws)  # move the global RNG
        state = torch.random.get_rng_state()
        model = AutoModelForCausalLMWithValueHead.from_pretrained("tiny:llama", peft_config=lora(), seed=0)
        assert torch.equal(torch.random.get_rng_state(), state)  # left alone
        adapters.append({k: v for k, v in model.pretrained_model.state_dict().items() if "lora_" in k})
    reference = add_adapter(load_model("tiny:llama", seed=0), lora(), 0).state_dict()
    for name, value in adapters[0].items():
        assert torch.equal(value, adapters[1][name]) and torch.equal(value, reference[name]), name
