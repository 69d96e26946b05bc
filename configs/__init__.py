"""The shipped YAML configs (package data: ``adagrpo.configs``). See :mod:`adagrpo.resources`."""
