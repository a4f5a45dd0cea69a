"""The basic example's declarations, served with --lazy-apps, compiled to uWSGI YAML.

    uwsgiconf-mules compile --format yaml > app.yaml

Under --lazy-apps the master never imports the application, so mules do not either: dispatch
mules import a task's module by name the first time they run one of its calls.
"""

import importlib.util
from pathlib import Path

# Load examples/basic/uwsgicfg.py under another name (this module is `uwsgicfg` too).
_spec = importlib.util.spec_from_file_location("basic_uwsgicfg", Path(__file__).parent.parent / "basic" / "uwsgicfg.py")
assert _spec and _spec.loader
basic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(basic)

section = basic.section
section.applications.switch_into_lazy_mode()

uwsgi_configuration = section.as_configuration()
