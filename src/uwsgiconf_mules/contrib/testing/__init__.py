"""Testing offloaded calls outside uWSGI: the test modes (:mod:`.modes`, public as
``uwsgiconf_mules.testing``) and the pytest plugin that gives them as fixtures
(:mod:`.pytest_plugin`, which the ``pytest11`` entry point loads through
``uwsgiconf_mules._pytest_plugin``). Importing this package imports neither."""
