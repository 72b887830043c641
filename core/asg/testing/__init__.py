"""Testing utilities for backbone plugins: the conformance kit (requires pytest)."""

from asg.testing.conformance import BackboneConformance, perturb_adapters

__all__ = ["BackboneConformance", "perturb_adapters"]
