"""Training the predictor's two U-Nets on labelled CT (phantoms) and exporting deployable weights.

Data flow: validate (every image has a label on the same grid, labels in 0..13) -> precompute, once,
each case's canonical arrays at the coarse spacing (whole volume, organ/background target) and at the
fine spacing (the organs' bounding box plus a margin, 14-class target) -> train each network on
random patches, most centred on an organ drawn uniformly among those present, with random contrast,
brightness, gamma and noise (CE + soft Dice, AdamW, one-cycle schedule, NDHWC memory format) -> export
RUN_DIR/weights/{config.json, coarse.pt, fine.pt} (fp16 state dicts), which
``python -m predictor --weights RUN_DIR/weights`` loads.
Reproducible from --seed on the same device and thread count.

Modules, each importing only those above it (no cycle):

- ``config``: :class:`TrainConfig`, :class:`NetTraining`, :class:`RunConfig`, :class:`SemiConfig`, ``train_config``;
- ``data``: validation (``DataError``), ``precompute`` / ``Case``, patches, augmentation, batches;
- ``loss``: ``dice_ce_loss``, ``class_weights``;
- ``loop``: ``train_net`` (one network, ``NetRun``), ``export``, ``train`` (the plain run), ``autocast_dtype``;
- ``semi``: semi-supervised training (``run_semi``: pseudo-labels, filtered, iterated, optionally
  distilled from a big teacher; ``--unlabeled DIR --rounds K --keep F --teacher big|small``);
- ``cli``: ``python -m predictor.train`` (also ``python -m predictor.training``): parses once, builds the
  dataclasses, maps outcomes to ``challenge.exitcodes``.
"""
