"""Adapters from the backbone protocol to the evaluation harnesses the paper's numbers come from.

- :mod:`asg.harness.lmms`: an lmms-eval model (``asg``, found through the ``lmms_eval.models`` entry
  point) for the multimodal understanding benchmarks;
- :mod:`asg.harness.lm`: an lm-eval ``LM`` (``asg``) for MMMU and text tasks;
- :mod:`asg.harness.geneval`: GenEval's folder layout, the bridge to its official evaluator, and its scores.

Each module imports its harness lazily enough that ``import asg`` never needs one installed
(``pip install asg-core[eval]`` brings both).
"""
