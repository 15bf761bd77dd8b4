#!/usr/bin/env python
"""Counts and failures from a pytest junit xml: ``python junit_summary.py tests.xml``."""

import sys
import xml.etree.ElementTree as ET

root = ET.parse(sys.argv[1]).getroot()
counts = {"passed": 0, "failed": 0, "error": 0, "skipped": 0}
seconds, bad = 0.0, []
for case in root.iter("testcase"):
    seconds += float(case.get("time") or 0)
    name = f"{case.get('classname', '')}::{case.get('name', '')}"
    kinds = [child.tag for child in case if child.tag in ("failure", "error", "skipped")]
    kind = {"failure": "failed", "error": "error", "skipped": "skipped"}[kinds[0]] if kinds else "passed"
    counts[kind] += 1
    if kind in ("failed", "error", "skipped"):
        child = next(c for c in case if c.tag in ("failure", "error", "skipped"))
        message = (child.get("message") or (child.text or "")).strip().splitlines()
        bad.append(f"  {kind.upper():7} {name}: {message[0][:300] if message else ''}")
print(f"junit: {counts} (sum of test times {seconds:.0f} s)")
slowest = sorted(root.iter("testcase"), key=lambda c: -float(c.get("time") or 0))[:8]
print("slowest: " + ", ".join(f"{c.get('name')} {float(c.get('time') or 0):.0f}s" for c in slowest))
print("\n".join(bad))
