"""``python -m uwsgiconf_mules.contrib.rq.worker worker ARGS``: RQ's own ``rq worker ARGS``, in this
process, with an exit status that tells an abnormal end from a normal one.

RQ's worker loop ends on an exception it did not expect (``found an unhandled exception,
quitting...``) or on a Redis timeout (``Redis connection timeout, quitting...``): it logs that at
ERROR and returns as if it were done, and ``rq worker`` exits with status 0, so a supervisor that
restarts a failed worker (systemd ``Restart=on-failure``) leaves it stopped while jobs wait. Here
such an end exits with status 1; every other status is RQ's. ``uwsgiconf-mules worker`` runs this
module (see ``sender.worker_command``).
"""

from __future__ import annotations

import logging
import sys

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: keep worker imports cheap
if TYPE_CHECKING:
    from collections.abc import Sequence

LOGGER = "rq.worker"
"""The logger of RQ's worker loop."""


class _QuitOnError(logging.Filter):
    """Notes the ERROR records of RQ's worker loop that say it quits (it passes every record on)."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR and isinstance(record.msg, str) and "quitting" in record.msg:
            self.seen.append(record.getMessage())
        return True


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``rq`` with ``argv`` (default: this process's arguments); return its exit status, 1 when
    its worker loop quit on an error while RQ would exit with 0.

    :param argv: The arguments of ``rq``, e.g. ``["worker", "--burst", "queue"]``.
    """
    from rq.cli.cli import main as rq_main

    watch = _QuitOnError()  # a filter, not a handler: RQ adds its own handlers only when the logger has none
    logging.getLogger(LOGGER).addFilter(watch)
    try:
        rq_main(args=list(sys.argv[1:] if argv is None else argv), prog_name="rq")
    except SystemExit as exc:
        code = exc.code
    else:  # pragma: no cover - click's standalone mode always exits
        code = 0
    if watch.seen and code in (0, None):
        sys.stderr.write(f"uwsgiconf-mules: the RQ worker quit on an error ({watch.seen[-1]}): exit status 1\n")
        return 1
    if code is None or isinstance(code, int):
        return code or 0
    sys.stderr.write(f"{code}\n")
    return 1


if __name__ == "__main__":  # pragma: no cover - runs as the RQ worker's process
    sys.exit(main())
