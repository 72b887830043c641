"""The self-evolving training loop: recipes (typed configs, presets e1 … e7), schedule, trainer.

Import the parts from their modules (``asg.train.recipe``, ...); this package imports nothing itself,
so that registering the built-in recipes (``asg.train.plugin``) stays free of torch.
"""
