"""Pure builders of the child manifests: same K2ThinkDeployment in, byte-identical YAML out."""

from k2think_operator.render.rayservice import build_children, build_rayservice, render_yaml

__all__ = ["build_children", "build_rayservice", "render_yaml"]
