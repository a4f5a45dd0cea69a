"""What the tests share: the real-uWSGI harness (:mod:`.harness`), the builders' cases and expected
outputs (:mod:`.helpers`), a redis-server (:mod:`.redis_server`), the RQ tasks (:mod:`.remote_tasks`),
the Django site (:mod:`.django_site`) and the pings of the loop-engine tests (:mod:`.pings`).
Imported as a package: ``from support.harness import ...`` (``tests/`` is pytest's ``pythonpath``)."""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
"""The ``tests/`` directory."""
ROOT = TESTS.parent
"""The project's root."""
