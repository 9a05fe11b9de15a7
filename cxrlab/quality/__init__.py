"""Image-quality gate: frontal vs lateral view, inverted grey levels, and "is this a chest radiograph at all".

Learned from radiographs (a frozen backbone's pooled features, small models on top; see :mod:`.gate`), used by
``cxrlab quality``, exclusions (``data exclude --quality``), batch prediction (``quality_*`` columns) and the
service (refuses laterals and non-chest images, corrects inverted ones). Without a trained gate, checks say
"not checked".
"""

from cxrlab.quality.config import QualityConfig, load_quality_config
from cxrlab.quality.gate import NOT_CHECKED, QualityGate, QualityResult
from cxrlab.quality.rules import image_checks, mask_checks
from cxrlab.quality.train import cross_validate, train_quality_gate, view_labels

__all__ = ["NOT_CHECKED", "QualityConfig", "QualityGate", "QualityResult", "cross_validate", "image_checks",
           "load_quality_config", "mask_checks", "train_quality_gate", "view_labels"]
