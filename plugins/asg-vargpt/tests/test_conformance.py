"""The backbone protocol's contract (asg.testing.BackboneConformance) on a tiny random VARGPT."""

from asg.testing import BackboneConformance
from asg_vargpt.backbone import VargptBackbone


class TestVargptConformance(BackboneConformance):
    def make_backbone(self) -> VargptBackbone:
        return VargptBackbone.load(preset="tiny", seed=0)
