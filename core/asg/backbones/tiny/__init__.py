"""`tiny`, the embedded default backbone (registered by ``asg.backbones.tiny.plugin``).

Importing this package is cheap; the model lives in ``asg.backbones.tiny.model`` (torch).
"""
