"""The backbone protocol's contract (asg.testing.BackboneConformance) on a tiny random BAGEL."""

from asg.testing import BackboneConformance
from asg_bagel.backbone import BagelBackbone


class TestBagelConformance(BackboneConformance):
    def make_backbone(self) -> BagelBackbone:
        return BagelBackbone.load(preset="tiny", seed=0)
