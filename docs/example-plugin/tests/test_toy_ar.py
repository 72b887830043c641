"""The example plugin passes the asg conformance kit and is discoverable as an installed plugin."""

import json
import subprocess
import sys

from asg.testing import BackboneConformance
from asg_example.model import ToyARBackbone


class TestToyAR(BackboneConformance):
    """Every contract check of the kit, run against toy-ar."""

    def make_backbone(self):
        return ToyARBackbone(seed=0)


def test_plugin_is_installed_and_registered():
    """`asg plugins` lists the installed example distribution and its backbone."""
    out = subprocess.run([sys.executable, "-m", "asg", "plugins"], capture_output=True, text=True, check=True)
    records = {r["name"]: r for r in json.loads(out.stdout)}
    assert records["example"]["distribution"] == "asg-example"
    assert records["example"]["registered"]["backbones"] == ["toy-ar"]
    assert records["example"]["error"] is None


def test_image_tokens_round_trip():
    """A palette image survives the image -> tokens -> image round trip exactly."""
    bb = ToyARBackbone(seed=0)
    tokens = bb.image_tokens(bb.tokens_to_image(bb.color_ids[[1, 2, 3, 4] * 16]))
    assert tokens == bb.color_ids[[1, 2, 3, 4] * 16].tolist()
