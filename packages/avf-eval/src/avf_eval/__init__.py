"""avf-eval: score emotion-recognition models the way the AVF-MAE++ paper does.

Modules, one job each:

* :mod:`avf_eval.metrics`      UAR, WAR, WA-F1, macro-F1, UF1, PCC, CCC (defined on edge cases)
* :mod:`avf_eval.protocols`    the 17 benchmarks as validated data, with the paper's numbers
* :mod:`avf_eval.splits`       subject/session-independent and LOSO folds from metadata
* :mod:`avf_eval.prediction_reader`  the predictions file format (JSONL/CSV) and its reader
* :mod:`avf_eval.aggregation`  epoch selection, view merge, per-fold and summary scores
* :mod:`avf_eval.table` / :mod:`avf_eval.report` / :mod:`avf_eval.plots`  output
* :mod:`avf_eval.video_emotions`  one raw video -> emotion probabilities (``predict`` extra)
* :mod:`avf_eval.cli`          the ``avf-eval`` command
"""

__version__ = "0.1.0"
