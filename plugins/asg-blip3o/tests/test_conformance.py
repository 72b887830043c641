"""The backbone protocol's contract (asg.testing.BackboneConformance) on a tiny random BLIP3o."""

from asg.testing import BackboneConformance
from asg_blip3o.backbone import Blip3oBackbone


class TestBlip3oConformance(BackboneConformance):
    def make_backbone(self) -> Blip3oBackbone:
        return Blip3oBackbone.load(preset="tiny", seed=0)
