"""`make demo`: the basic example on a real uWSGI, and an account of what ran where.

Compiles ``examples/basic/uwsgicfg.py`` with ``uwsgiconf compile``, starts uWSGI on a loopback
port, sends a few requests, waits (bounded) for the mules to do the work, prints which task ran
in which mule and farm, and stops uWSGI. Nothing is written into the source tree.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support.harness import compile_config, launch  # noqa: E402

BASIC = HERE / "basic"
REQUESTS = ["/thumbnail?id=1", "/thumbnail?id=2", "/thumbnail?id=3", "/thumbnail?id=4",
            "/report?name=weekly", "/notify?text=hello+from+a+view"]
TIMEOUT = 20.0


def describe(entry: dict[str, object]) -> str:
    farms = entry["farms"]
    where = f"mule {entry['mule']} (pid {entry['pid']})" + (f", farm {', '.join(farms)}" if farms else "")
    if entry["event"] == "make_thumbnail":
        what = f"tasks.make_thumbnail({entry['image_id']})"
    elif entry["event"] == "build_report":
        what = f"tasks.build_report({entry['name']!r})"
    else:
        what = f"inbox.py received {entry['message']!r}"
    return f"  {what:<42} ran in {where}"


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="uwsgiconf-mules-demo-") as tmp:
        run_dir = Path(tmp)
        journal = run_dir / "journal.log"
        config, compiled = compile_config(BASIC, "ini", out_dir=run_dir)
        if compiled.returncode != 0:
            print(compiled.stderr, file=sys.stderr)
            return 1
        print(f"$ uwsgiconf compile examples/basic/uwsgicfg.py   # {len(compiled.stdout.splitlines())} lines")
        for line in compiled.stdout.splitlines():
            if line.startswith(("mule", "farm", "env")):
                print(f"  {line}")
        server = launch(config, BASIC, expect_mules=4, env={"DEMO_JOURNAL": str(journal)}, run_dir=run_dir)
        try:
            print(f"\nuWSGI is up on 127.0.0.1:{server.port} with 2 workers and 4 mules")
            print(f"  declared farms, as a worker sees them: {server.get('/farms')[1]}")
            for path in REQUESTS:
                print(f"  GET {path:<32} -> {server.get(path)[1]}")
            expected = len(REQUESTS)
            deadline = time.monotonic() + TIMEOUT
            while not journal.exists() or len(journal.read_text().splitlines()) < expected:
                if time.monotonic() > deadline:
                    print("the mules did not finish in time; uWSGI log:\n" + server.log()[-3000:], file=sys.stderr)
                    return 1
                time.sleep(0.05)
            print("\nWhat ran where:")
            for line in journal.read_text().splitlines():
                print(describe(json.loads(line)))
        finally:
            server.stop()
    print("\nuWSGI stopped. Try it yourself: see examples/basic/README.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
