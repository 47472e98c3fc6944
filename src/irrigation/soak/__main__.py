"""`python -m irrigation.soak HISTORY.jsonl [...]`: judge recorded histories again, offline
(exit 1 if any has a violation)."""

import sys
from pathlib import Path

from irrigation.soak import history
from irrigation.soak.checker import check, summary


def main(paths: list[str]) -> int:
    if not paths:
        print(__doc__, file=sys.stderr)
        return 2
    failed = False
    for path in paths:
        recorded = history.read(Path(path))
        violations = check(recorded)
        print(f"{path}: seed {recorded.seed}, {len(violations)} violations {summary(violations)}")
        for violation in violations:
            print(f"  {violation}")
        failed = failed or bool(violations)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
