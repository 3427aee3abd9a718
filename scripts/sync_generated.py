"""Rewrite the files that copy generated output after the default rules change: the rules
ConfigMap (the default rules verbatim) and the segment_change schema's examples (engine output
of the order and visit examples). tests/test_deploy.py and tests/test_schemas.py check both;
this script is how a deliberate rules change is carried into them.

    python -m scripts.sync_generated
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.test_schemas import run_input_examples
from worker.core.rules import default_rules_text

ROOT = Path(__file__).resolve().parent.parent
CONFIGMAP = ROOT / "deploy/k8s/configmap-rules.yaml"
SCHEMA = ROOT / "schemas/segment_change.v1.json"


def sync_configmap() -> None:
    lines = CONFIGMAP.read_text().splitlines(keepends=True)
    start = next(i for i, line in enumerate(lines) if line.strip() == "rules.toml: |") + 1
    end = next(i for i in range(start, len(lines)) if lines[i].startswith("---"))
    rules = default_rules_text().decode().splitlines()
    block = [f"    {line}\n" if line else "\n" for line in rules]
    CONFIGMAP.write_text("".join(lines[:start] + block + lines[end:]))


def sync_examples() -> None:
    schema = json.loads(SCHEMA.read_text())
    output = [change.to_dict() for change in run_input_examples()]

    def same_change(example: dict[str, object], change: dict[str, object]) -> bool:
        keys = ("customer_id", "dimension", "from", "to")
        cause = example["cause"]["type"]  # type: ignore[index]
        return all(example[k] == change[k] for k in keys) and change["cause"]["type"] == cause  # type: ignore[index]

    schema["examples"] = [next(c for c in output if same_change(e, c)) for e in schema["examples"]]
    SCHEMA.write_text(json.dumps(schema, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    sync_configmap()
    sync_examples()
    print(f"rewrote {CONFIGMAP.relative_to(ROOT)} and {SCHEMA.relative_to(ROOT)}")
