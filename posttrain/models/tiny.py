"""Offline tokenizer and seeded tiny models of real architectures.

No hub is reachable where we build and test, so ``tiny:<arch>[-<size>]`` names build a model from
the architecture's real config class with small dimensions and a fixed seed. The tokenizer is a
byte-level BPE trained on text the package ships, with pad/eos tokens and a ChatML chat template.
"""

from __future__ import annotations

import functools
from importlib import resources

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

PAD, EOS, IM_START, IM_END = "<|pad|>", "<|endoftext|>", "<|im_start|>", "<|im_end|>"
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
VOCAB_SIZE = 1024

# name -> (hidden, layers, heads, intermediate). "tiny" is for tests; the others are benchmark sizes.
SIZES = {
    "tiny": (64, 2, 4, 128),
    "5m": (256, 6, 4, 704),
    "50m": (576, 14, 9, 1536),
}
ARCHITECTURES = ("llama", "gpt2", "qwen2", "t5")
TASKS = ("causal-lm", "seq-cls", "seq2seq")


@functools.lru_cache(maxsize=1)
def _trained_tokenizer_json() -> str:
    text = resources.files("posttrain").joinpath("assets/corpus.txt").read_text(encoding="utf-8")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=[PAD, EOS, IM_START, IM_END],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(text.splitlines(), trainer=trainer)
    return tok.to_str()


def build_tokenizer() -> transformers.PreTrainedTokenizerFast:
    """The byte-level BPE tokenizer every ``tiny:`` model uses (deterministic, ~1 s the first time)."""
    tokenizer = transformers.PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_trained_tokenizer_json()),
        pad_token=PAD,
        eos_token=EOS,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHAT_TEMPLATE,
        model_max_length=2048,
    )
    return tokenizer


def parse_tiny_name(name: str) -> tuple[str, str]:
    """``"tiny:llama-5m"`` -> ``("llama", "5m")``; raises a ValueError that lists what exists."""
    spec = name.removeprefix("tiny:")
    arch, _, size = spec.partition("-")
    size = size or "tiny"
    if arch not in ARCHITECTURES or size not in SIZES:
        options = ", ".join(f"tiny:{a}" for a in ARCHITECTURES)
        raise ValueError(
            f"Unknown tiny model {name!r}. Use one of {options}, optionally with a size suffix "
            f"({', '.join('-' + s for s in SIZES if s != 'tiny')}), e.g. 'tiny:llama-5m'."
        )
    return arch, size


def tiny_config(arch: str, size: str = "tiny", vocab_size: int | None = None):
    hidden, layers, heads, inter = SIZES[size]
    kv_heads = max(k for k in range(1, heads // 2 + 1) if heads % k == 0) if heads > 1 else 1  # GQA must divide
    tokenizer = build_tokenizer()
    vocab = vocab_size or (len(tokenizer) + 63) // 64 * 64  # round up: friendlier matmul shapes
    ids = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
               bos_token_id=tokenizer.eos_token_id)
    if arch == "llama":
        return transformers.LlamaConfig(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=inter, max_position_embeddings=1024,
            tie_word_embeddings=False, **ids)
    if arch == "qwen2":
        return transformers.Qwen2Config(
            vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            num_key_value_heads=kv_heads, intermediate_size=inter, max_position_embeddings=1024,
            tie_word_embeddings=True, **ids)
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=vocab, n_embd=hidden, n_layer=layers, n_head=heads, n_inner=inter * 2, n_positions=1024,
            resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, **ids)
    if arch == "t5":
        return transformers.T5Config(
            vocab_size=vocab, d_model=hidden, d_kv=hidden // heads, d_ff=inter, num_layers=layers,
            num_heads=heads, dropout_rate=0.0, decoder_start_token_id=tokenizer.pad_token_id,
            pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    raise ValueError(f"Unknown architecture {arch!r}; expected one of {ARCHITECTURES}.")


_MODEL_CLASSES = {
    ("llama", "causal-lm"): "LlamaForCausalLM", ("llama", "seq-cls"): "LlamaForSequenceClassification",
    ("qwen2", "causal-lm"): "Qwen2ForCausalLM", ("qwen2", "seq-cls"): "Qwen2ForSequenceClassification",
    ("gpt2", "causal-lm"): "GPT2LMHeadModel", ("gpt2", "seq-cls"): "GPT2ForSequenceClassification",
    ("t5", "seq2seq"): "T5ForConditionalGeneration", ("t5", "seq-cls"): "T5ForSequenceClassification",
}


def build_tiny_model(name: str, task: str = "causal-lm", seed: int = 0, num_labels: int = 1):
    """A randomly initialised model of a real architecture; the same ``seed`` gives the same weights."""
    arch, size = parse_tiny_name(name)
    if arch == "t5" and task == "causal-lm":
        task = "seq2seq"  # T5 is encoder-decoder: its generative head is the seq2seq one
    key = (arch, task)
    if key not in _MODEL_CLASSES:
        raise ValueError(f"tiny:{arch} has no {task!r} head; available: "
                         f"{sorted(t for a, t in _MODEL_CLASSES if a == arch)}")
    config = tiny_config(arch, size)
    if task == "seq-cls":
        config.num_labels = num_labels
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, _MODEL_CLASSES[key])(config)
    model.config.name_or_path = name
    return model
