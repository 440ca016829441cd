"""The ShapesWorld world: the prompt grammar and its splits, the analytic scenes, ground-truth ray tracing, the
geometry metrics and the prompt-library builder.

Imports nothing of asdcli outside this package (only the standard library and torch), so the world can be read,
tested and reused without the text-to-3D core; the training app (`asdcli.shapes`) and the commands sit on top.
tests/test_shapes_layout.py checks it.
"""
