"""How the benchmarks print their result: one JSON object (``--json``), or one ``key: value`` line each."""

import json


def emit(out: dict, as_json: bool, width: int = 24) -> int:
    """Print ``out`` and return 0 (the exit status)."""
    if as_json:
        print(json.dumps(out))
    else:
        for k, v in out.items():
            print(f"{k:>{width}}: {v}")
    return 0
