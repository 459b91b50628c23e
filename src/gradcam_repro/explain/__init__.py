"""Stage 3, explain: one explainer protocol and registry (`registry`) over the CAM family (`cam`: Grad-CAM
and six relatives) and Captum's pixel-space methods (`pixel`)."""
