"""GPU smoke test of the real VARGPT-v1.1: ``python -m asg_vargpt.smoke --model DIR [--size 512] [--steps 25]``.

Loads it in bf16 on CUDA, answers a question about an image, generates an image, runs one U and one G
step of ``asg train``, and prints seconds and peak memory; skips cleanly without a GPU or checkpoint.
The work is :mod:`asg.testing.smoke`, shared by every backbone plugin.
"""

import sys

from asg.testing.smoke import main as _main


def main(argv: list[str] | None = None) -> int:
    return _main(argv, backbone="vargpt")


if __name__ == "__main__":
    sys.exit(main())
