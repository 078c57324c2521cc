"""Training of the MyoPS cascade (localiser, DAE, ASSN, PRSN) on any folder in MyoPS layout.

``training`` builds the engine's model folders; it imports :mod:`myops` (networks, preprocessing, model folders,
the one inference pipeline, metrics) and is never imported by it.

Entry points (``python -m training <command> --help``):

- ``cv``: the whole cascade (localiser -> DAE -> ASSN -> PRSN -> export -> validation through
  :class:`myops.pipeline.Segmenter`) for one fold, several folds, or all folds, then the CV summary.
- ``localizer``, ``dae``, ``assn``, ``prsn``: one stage of one fold.
- ``export``: a model folder from trained stages (one fold, or an ensemble of folds), or with ``--per-fold`` a run
  folder of the fold models.
- ``swap``, ``merge``, ``retune``: a new model folder from an existing one, with one ensemble member replaced by
  another run's, with another model folder's members added, or with the inference options a CV study measured.
- ``summarize``: pool a run's validated folds into ``cv_metrics.json`` and ``cv_cases.csv``.
- ``report``: the paper's Tables 1 and 2 as markdown from a main run and its comparison runs.
- ``pack``: a MyoPS folder prepared once into one compact file of context windows.

A fold is validated (its model segments its held-out cases through the engine and is scored) by ``cv`` and by a
stage command once the fold's cascade is complete; there is no separate ``evaluate`` command.

Layout of a run: ``runs/<name>/config.json``, ``split.json``, ``fold_<k>/<stage>/`` (checkpoints, ``log.jsonl``,
``final.safetensors`` and ``final.json``), ``fold_<k>/model/`` (engine model folder), ``fold_<k>/predictions/``,
``fold_<k>/metrics.json``, ``cv_metrics.json`` and ``cv_cases.csv`` (:mod:`training.cv`).
"""

__all__ = []
