"""The tools on top of the stack: the ``versus`` command line, the demo, process launchers and model builders."""
