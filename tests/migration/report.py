"""Run the migration suite and print its table: case | posttrain ok | TRL first loss | posttrain first loss | |diff|.

    python tests/migration/report.py                # every case (TRL halves too when trl is installed)
    python tests/migration/report.py -k "sft or dpo"  # any pytest arguments select cases

The same table ends every ``pytest tests/migration`` run (conftest's terminal summary); this script also
writes it as markdown to ``--out`` (default: print only).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", help="Also write the markdown table to this file.")
    args, pytest_args = parser.parse_known_args(argv)
    sys.path.insert(0, ROOT)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    import pytest

    from tests.migration.harness import table

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "results.jsonl")
        os.environ["MIGRATION_RESULTS"] = path
        code = pytest.main([os.path.join(HERE), "-q", "-p", "no:warnings", "-p", "no:cacheprovider",
                            "--no-header", "-rN", "--tb=no", *pytest_args])
        results: dict = {}
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    row = json.loads(line)
                    results.setdefault(row.pop("case"), {})[row.pop("lib")] = row
    text = table(results)
    print("\n" + text)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as fh:
            fh.write(text + "\n")
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
