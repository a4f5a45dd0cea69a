"""Work that runs in mules: offloaded functions live at module level in an importable module."""

import json
import os
import time

from uwsgiconf_mules.runtime import Farm, Mule

JOURNAL = os.environ.get("DEMO_JOURNAL", "journal.log")


def note(event: str, **details: object) -> None:
    """Append what ran, and where, to the journal."""
    details.update(event=event, mule=Mule.get_current_id(), pid=os.getpid(),
                   farms=[farm.name for farm in Farm.get_farms() if farm.is_mine()])
    with open(JOURNAL, "a") as journal:
        journal.write(json.dumps(details) + "\n")


@Farm("images").offload()
def make_thumbnail(image_id: int) -> None:
    """Runs in one mule of farm "images" (mule 1 or 2)."""
    time.sleep(0.05)  # pretend to resize an image
    note("make_thumbnail", image_id=image_id)


@Mule(3).offload()
def build_report(name: str) -> None:
    """Runs in mule 3."""
    note("build_report", name=name)
