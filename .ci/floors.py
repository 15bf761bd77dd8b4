"""Print pip constraints that pin each lower bound of pyproject.toml's dependencies (``name>=X`` ->
``name==X``), so ``make floors`` installs the oldest versions we claim to support and runs tests on them."""

import re
import sys

text = open(sys.argv[1] if len(sys.argv) > 1 else "pyproject.toml", encoding="utf-8").read()
block = re.search(r"^dependencies = \[(.*?)^\]", text, re.S | re.M).group(1)
for spec in re.findall(r'^\s*"([^"]+)"', block, re.M):
    match = re.match(r"^([A-Za-z0-9_.\-]+)\s*(?:\[[^]]*\])?\s*[^;]*?>=\s*([^,;\s]+)", spec)
    if match:
        print(f"{match.group(1)}=={match.group(2)}")
