"""Evaluation: verification protocols, embedding images, scoring packs, reports.

``binface.eval.verification`` is the protocol *function* (the module of the same
name stays importable: ``from binface.eval.verification import tar_at_far``).
The protocols are described in docs/protocol.md.

Importing this package does not import torch; the functions that run a model
(``embed_images``, ``evaluate_pack``, ``load_eval_pack``, ``Pack``,
``subset_pairs``) are loaded on first use.
"""

from binface.eval.report import (
    plot_roc,
    results_table,
    write_report_json,
    write_report_markdown,
)
from binface.eval.verification import (
    PROTOCOLS,
    contiguous_folds,
    tar_at_far,
    threshold_at_far,
    verification,
    verification_from_pack_embeddings,
)
from binface.lazy import lazy_exports

_LAZY = {  # name -> module, imported on first use (they import torch)
    "Pack": "binface.eval.run",
    "embed_images": "binface.eval.run",
    "evaluate_pack": "binface.eval.run",
    "load_eval_pack": "binface.eval.run",
    "subset_pairs": "binface.eval.run",
}

__all__ = [
    "PROTOCOLS",
    "Pack",
    "contiguous_folds",
    "embed_images",
    "evaluate_pack",
    "load_eval_pack",
    "plot_roc",
    "results_table",
    "subset_pairs",
    "tar_at_far",
    "threshold_at_far",
    "verification",
    "verification_from_pack_embeddings",
    "write_report_json",
    "write_report_markdown",
]


__getattr__, __dir__ = lazy_exports(__name__, _LAZY, globals())
