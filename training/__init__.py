"""Training of the MyoPS cascade (localiser, DAE, ASSN, PRSN) on any folder in MyoPS layout.

``training`` builds the engine's model folders; it imports :mod:`myops` (networks, preprocessing, model folders,
the one inference pipeline, metrics) and is never imported by it.

Entry points (``python -m training <command> --help``):

- ``cv``: the whole cascade (localiser -> DAE -> ASSN -> PRSN -> export -> validation through
  :class:`myops.pipeline.Segmenter`) for one fold, several folds, or all folds, then the CV summary.
- ``localizer``, ``dae``, ``assn``, ``prsn``: one stage of one fold.
- ``export``: a model folder from trained stages (one fold, or an ensemble of folds).
- ``evaluate``: validate an exported fold model on its held-out cases through the engine.

Layout of a run: ``runs/<name>/config.json``, ``split.json``, ``fold_<k>/<stage>/`` (checkpoints, ``log.jsonl``,
``summary.json``), ``fold_<k>/model/`` (engine model folder), ``fold_<k>/predictions/``, ``fold_<k>/metrics.json``,
``cv_metrics.json`` and ``cv_cases.csv``.
"""

__all__ = []
