"""The chest phantom: synthetic frontal radiographs with exactly known anatomy, disease and clinical course.

``generate_phantom(out_dir, n_patients=60, size=256, seed=0)`` writes a folder in the cxrlab manifest format
(``images/*.png`` 8-bit, ``masks/<kind>/*.png`` 0/255, ``manifest.csv`` with relative paths), so the demo and
the tests run exactly the code path of real data. ``render_sample(...)`` renders one sample dict in memory.

Anatomy (:mod:`.anatomy`): body outline and soft tissue, two lungs of varying shape and size, the heart on
the PATIENT's left (= image right on PA/AP), mediastinum with aortic knob, trachea and main bronchi, spine,
posterior ribs, clavicles, diaphragm domes (right higher), breast shadows; per study: inspiration, AP
magnification, shift, rotation (+-5 degrees), blur, exposure (contrast, offset, gamma), noise, and an
occasional text marker.

Disease (:mod:`.disease`), drawn only inside the lungs as ground glass and consolidation:
normal (none); bacterial (focal lobar consolidation, one lung); viral (bilateral perihilar interstitial);
covid19 (bilateral peripheral lower-zone ground glass). Course (:mod:`.course`): 1-6 studies over days with
evolving severity; ICU admission and survival (days from first study, ``death_event`` 0 = censored) depend on
the course's peak severity and age.

Manifest columns: the core columns of :mod:`cxrlab.data.schema` (``source_dataset`` = "phantom", view PA/AP),
``finding``, ``went_icu``, ``survival_days``, ``death_event`` (patient-level), the mask columns
``mask_lungs``, ``mask_right_lung``, ``mask_left_lung``, ``mask_heart``, ``mask_disease`` plus the extra
``mask_consolidation`` (the consolidated part of the disease), and per-image truth computed from the final
masks (after rotation), so it is exact:

- ``involvement_right/left``: disease pixels / lung pixels of that lung, 0..1.
- zones: each lung's vertical extent (top-most to bottom-most lung row) is cut into three equal-height bands;
  A/B/C = patient-right upper/middle/lower, D/E/F = patient-left upper/middle/lower;
  ``zone_involvement_A..F`` = disease / lung pixels in the zone.
- ``opacity_right/left``: 0 if no disease, 1 if 0 < f <= 1/3, 2 if 1/3 < f <= 2/3, 3 if f > 2/3.
- ``brixia_A..F``: the same bands on the zone's involvement (0-3); ``brixia_global`` = their sum (0-18).
- ``geographic_extent`` (Cohen 0-8): per lung 0 none, 1 < 25 %, 2 < 50 %, 3 < 75 %, 4 >= 75 %; summed.
- ``opacity_score`` (Cohen 0-6): per lung 0 none, 1 ground glass (consolidation < 10 % of the disease),
  2 consolidation, 3 white-out (consolidation > 75 % of the lung); summed.

Deterministic: the same arguments give identical files (one RNG stream per patient and per study).
"""

from cxrlab.data.phantom.generate import COLUMNS, MASK_CONSOLIDATION, generate_phantom, render_sample
from cxrlab.data.phantom.truth import truth_from_masks, zone_map

__all__ = ["COLUMNS", "MASK_CONSOLIDATION", "generate_phantom", "render_sample", "truth_from_masks", "zone_map"]
