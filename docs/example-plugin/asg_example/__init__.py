"""asg-example: the backbone plugin that docs/plugins.md walks through."""
