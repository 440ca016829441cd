"""asd: scalable text-to-3D generation with Asynchronous Score Distillation.

Importing this package imports no torch, diffusers or transformers: heavy modules load on demand.
"""

__version__ = "0.1.0"
