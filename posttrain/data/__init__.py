from .collate import PreferenceCollator, SFTCollator
from .formats import DataFormatError, detect_format, load_rows, validate

__all__ = ["DataFormatError", "PreferenceCollator", "SFTCollator", "detect_format", "load_rows", "validate"]
