"""Visual explanations of StagedNets: Grad-CAM and UniCAM (the math is in
:mod:`kdbench.functional`; these modules only run the models)."""
from kdbench.explain.gradcam import gradcam_maps, last_stage_head
from kdbench.explain.unicam import unicam_from_models, unicam_map, unicam_maps

__all__ = ["gradcam_maps", "last_stage_head", "unicam_map", "unicam_maps", "unicam_from_models"]
