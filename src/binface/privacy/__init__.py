"""Privacy analysis of face models: what an attacker recovers, float against 8-bit
against binary (the seed's third proposal).

Three attacks, each a function of any PyTorch model that maps 112x112 faces to
embeddings (plus its margin head where the attack needs one):

- gradient inversion (``gradient.py``): the gradient of one training step gives away
  the labels (largest class-centre gradients), the embedding (analytically, at batch
  1), a dense first layer's input (exactly) and, by optimisation, the images
  (Inverting Gradients: cosine gradient matching + total variation);
- template inversion (``template.py``): a face rebuilt from a stored embedding by
  white-box optimisation, judged at the attacked model's FMR = 0.1% threshold and by
  an independent evaluator model;
- membership inference (``membership.py``): a confidence threshold on training versus
  held-out identities (AUC, advantage).

Metrics come from well-kept libraries (PSNR and SSIM from scikit-image, intervals from
SciPy) in the ``privacy`` extra. Results are "leakage measured under this attack and
budget", never a proof of privacy. Details: docs/privacy.md.
"""

from __future__ import annotations

from binface.lazy import lazy_exports

_API = {
    "MarginHead": "binface.privacy.head",
    "load_attack_target": "binface.privacy.head",
    "observe_gradients": "binface.privacy.gradient",
    "recover_labels": "binface.privacy.gradient",
    "recover_embedding": "binface.privacy.gradient",
    "recover_dense_input": "binface.privacy.gradient",
    "invert_gradients": "binface.privacy.gradient",
    "label_accuracy": "binface.privacy.gradient",
    "defend": "binface.privacy.gradient",
    "invert_template": "binface.privacy.template",
    "threshold_at_fmr": "binface.privacy.template",
    "membership_scores": "binface.privacy.membership",
    "membership_attack": "binface.privacy.membership",
    "psnr": "binface.privacy.metrics",
    "ssim": "binface.privacy.metrics",
    "clopper_pearson": "binface.privacy.metrics",
    "bootstrap_ci": "binface.privacy.metrics",
}

__all__ = sorted(_API)

__getattr__, __dir__ = lazy_exports(__name__, _API, globals())
