from .loading import load_model, load_tokenizer
from .tiny import build_tiny_model, build_tokenizer

__all__ = ["build_tiny_model", "build_tokenizer", "load_model", "load_tokenizer"]
