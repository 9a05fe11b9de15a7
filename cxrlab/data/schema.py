"""The Manifest schema and the sample-dict keys: the contract every stage of cxrlab shares.

Manifest: one row per image. Paths are stored relative to the manifest file's folder on disk and are
absolute in memory (``Manifest.df``). Left/right always mean the PATIENT's left/right.
"""

from __future__ import annotations

# --- Manifest columns -------------------------------------------------------------------------------
IMAGE = "image"
PATIENT_ID = "patient_id"
STUDY_ID = "study_id"
OFFSET_DAYS = "offset_days"
VIEW = "view"
SEX = "sex"
AGE = "age"
SOURCE_DATASET = "source_dataset"

CORE_COLUMNS = [IMAGE, PATIENT_ID, STUDY_ID, OFFSET_DAYS, VIEW, SEX, AGE, SOURCE_DATASET]
REQUIRED_COLUMNS = [IMAGE, PATIENT_ID, SOURCE_DATASET]
# 1.0 where the pretrained (``run:``) backbone that made an embedding saw the film's patient (cxrlab.pretrain.guard)
SEEN_IN_PRETRAINING = "seen_in_pretraining"

# Canonical mask columns (binary PNG 0/255, same size as the image; empty = no mask).
MASK_LUNGS = "mask_lungs"                 # both lungs in one mask
MASK_RIGHT_LUNG = "mask_right_lung"       # patient's right lung (image left in PA/AP)
MASK_LEFT_LUNG = "mask_left_lung"         # patient's left lung (image right in PA/AP)
MASK_HEART = "mask_heart"
MASK_DISEASE = "mask_disease"             # infection / opacity (e.g. QaTa-COV19, phantom disease)
MASK_COLUMNS = [MASK_LUNGS, MASK_RIGHT_LUNG, MASK_LEFT_LUNG, MASK_HEART, MASK_DISEASE]

# Canonical label columns (importers map their native labels onto these; any other column is kept as extra).
FINDING = "finding"            # coarse diagnosis: normal / bacterial / viral / covid19 / ... (see FINDINGS)
WENT_ICU = "went_icu"          # 0/1
SURVIVAL_DAYS = "survival_days"
DEATH_EVENT = "death_event"    # 0/1 (1 = died at survival_days)
OPACITY_RIGHT = "opacity_right"  # 0-3 per-lung opacity grade (0 %, 1-33 %, 34-66 %, 67-100 % of lung)
OPACITY_LEFT = "opacity_left"
GEOGRAPHIC_EXTENT = "geographic_extent"  # Cohen 0-8
OPACITY_SCORE = "opacity_score"          # Cohen 0-6
BRIXIA_ZONES = ["A", "B", "C", "D", "E", "F"]  # A-C patient-right upper/middle/lower, D-F patient-left
BRIXIA_COLUMNS = [f"brixia_{z}" for z in BRIXIA_ZONES]
BRIXIA_GLOBAL = "brixia_global"

FINDINGS = ["normal", "bacterial", "viral", "covid19"]
VIEWS = ["PA", "AP", "AP Supine", "L", "unknown"]
FRONTAL_VIEWS = {"PA", "AP", "AP Supine"}
SEXES = {"M", "F"}

# --- Sample dict keys (what a Dataset yields and transforms act on) -------------------------------------
# image: float32 array HxW in [0, 1] (channel-first CxHxW after ToTensor-like transforms)
# masks: uint8 arrays HxW with values {0, 1}, same size as the image
# labels: dict column -> value; meta: dict with patient_id, study_id, image path, source_dataset, ...
KEY_IMAGE = "image"
KEY_LUNG_MASK = "lung_mask"
KEY_RIGHT_MASK = "patient_right_mask"
KEY_LEFT_MASK = "patient_left_mask"
KEY_HEART_MASK = "heart_mask"
KEY_DISEASE_MASK = "disease_mask"
KEY_LABELS = "labels"
KEY_META = "meta"

MASK_COLUMN_TO_KEY = {
    MASK_LUNGS: KEY_LUNG_MASK,
    MASK_RIGHT_LUNG: KEY_RIGHT_MASK,
    MASK_LEFT_LUNG: KEY_LEFT_MASK,
    MASK_HEART: KEY_HEART_MASK,
    MASK_DISEASE: KEY_DISEASE_MASK,
}
MASK_KEYS = list(MASK_COLUMN_TO_KEY.values())
