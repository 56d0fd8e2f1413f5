"""Training logs to tables and curves: DeiT/LeViT ``log.txt``, timm ``summary.csv``, MMDetection/MMSegmentation JSON,
Swin-style text logs. One module per format (``deit``, ``timm``, ``mm``, ``swin``); ``reader`` recognises and reads
files, ``summary`` makes tables and curves.

Formats are detected from the content, never from the file name:

* ``deit``: one JSON object per epoch and line (``train_lr, train_loss, test_loss, test_acc1, test_acc5, epoch,
  n_parameters``), the ``log.txt`` of DeiT, LeViT and the RepNeXt/RecNeXt repositories.
* ``timm``: timm ``train.py``'s ``summary.csv`` (``epoch, train_loss, eval_loss, eval_top1, eval_top5[, lr]``); the
  sibling ``args.yaml`` (``X_args.yaml`` beside ``X_summary.csv``) becomes :attr:`RunLog.args`.
* ``mmdet`` / ``mmseg``: MMCV JSON logs, an ``env_info`` line then ``train`` and ``val`` records. There is one record
  per evaluation; its ``train_loss`` is the mean training loss since the previous evaluation and its ``iter`` the
  last training iteration before it. A run evaluated several times within one logged epoch (MMSegmentation's
  iteration-based schedules) is indexed by ``iter`` instead of ``epoch``. Summaries give the last and the best
  (with its epoch or iteration) of box AP, mask AP and mIoU; :func:`downstream_metrics` all nine metrics.
* ``swin``: the text log of Swin-Transformer-style trainers (MLLA): per ``EPOCH n`` the `` * Acc@1 A Acc@5 B`` and
  ``Accuracy of the network ...`` lines of the model and, optionally, of its EMA (``ema_top1``, ``ema_top5``).

Records use common names: ``lr, train_loss, eval_loss, top1, top5`` (DeiT's ``train_lr, test_loss, test_acc1,
test_acc5``, timm's ``eval_top1, eval_top5``); other numeric keys keep their names (per-class ``IoU.*`` and ``Acc.*``
of MMSegmentation are left out). Detection and segmentation metrics logged as fractions (``bbox_mAP`` 0.42,
``mIoU`` 0.41, judged per column: every value at most 1) are scaled to percent.

A run is named after its file's stem (``recnext_m1_120e_224x224_rec_5x5_7603.txt`` is
``recnext_m1_120e_224x224_rec_5x5_7603``), except for the names trainers always write: ``log.txt``,
``summary.csv``, ``log_rank0.txt`` and MMCV's ``<YYYYmmdd_HHMMSS>.log.json`` are named after their folder,
``X_summary.csv`` and ``X.log.json`` after ``X``.

Real logs are messy. Blank lines, a truncated last line (a killed run), unparseable lines, NaN/Infinity values
(kept as missing), missing keys, and epochs logged twice (a resumed run; the last record wins) are tolerated:
each kind of defect gives one :class:`LogWarning` naming ``file:line`` of its first occurrence and how many lines
had it (notes on a whole file, such as a run without records or a name the group-by regex does not match, name
the file). A file in no known format raises :class:`LogFormatError` naming it. No run is dropped: a run without
usable records still gets a row in :func:`summarize`.
"""

from .base import (
    CURVE_METRICS,
    DEFAULT_PATTERNS,
    DOWNSTREAM_METRICS,
    LOG_FORMATS,
    PLOT_METRICS,
    SUMMARY_COLUMNS,
    LogFormatError,
    LogWarning,
    RunLog,
    run_name,
)
from .reader import assign_groups, compile_group_by, detect_format, find_logs, read_log, read_logs
from .summary import best_and_last, curves, downstream_metrics, layout, plot_curves, run_metrics, summarize

__all__ = [
    "CURVE_METRICS",
    "DEFAULT_PATTERNS",
    "DOWNSTREAM_METRICS",
    "LOG_FORMATS",
    "PLOT_METRICS",
    "SUMMARY_COLUMNS",
    "LogFormatError",
    "LogWarning",
    "RunLog",
    "assign_groups",
    "best_and_last",
    "compile_group_by",
    "curves",
    "detect_format",
    "downstream_metrics",
    "find_logs",
    "layout",
    "plot_curves",
    "read_log",
    "read_logs",
    "run_metrics",
    "run_name",
    "summarize",
]
