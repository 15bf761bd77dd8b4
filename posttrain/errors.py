"""posttrain's errors about its inputs. Each message says what is wrong (the field, file and line, reward
function and sample, ...) and how to fix it, in one line: ``posttrain <command>`` prints it and exits with
status 2 (``--debug`` adds the traceback).

- :class:`PostTrainError`: the base of them all;
- :class:`ConfigError`: a config value out of range (also a ``ValueError``, as TRL/transformers raise);
- ``DataFormatError`` (``posttrain.data.formats``): a dataset file, column or row;
- ``RewardError`` (``posttrain.rewards.base``): a reward function failed or returned something unusable.
"""

from __future__ import annotations


class PostTrainError(Exception):
    """An input posttrain cannot use; the message names it and says how to fix it."""


class ConfigError(PostTrainError, ValueError):
    """A config field holds a value outside its valid range (the message names the field, the value and the range)."""
