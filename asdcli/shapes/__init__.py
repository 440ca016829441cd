"""ShapesWorld, the embedded default world, in two layers.

- `asdcli.shapes.world`: the world itself (grammar and splits, analytic scenes, ray-traced ground truth,
  geometry metrics, prompt libraries). Imports nothing of asdcli outside it.
- `asdcli.shapes` (this package): the app that trains and evaluates the bundled models on top of the core:
  train_prior / train_prior_mv / train_clip (+ their exports), prior_data, runs, vocab (the models' tokenizer),
  gt_render (the core's cameras and lighting → the world's tracer), eval_prior / eval_prior_mv / evaluation,
  bundled / bundled_text (the shipped assets), and the CLI `python -m asdcli.shapes` (`__main__`).
"""
