"""YAML run configs shipped with lorapop (``default.yaml`` is what ``lorapop run`` uses with no argument)."""
