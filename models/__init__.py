"""Foundation-model adapters (depth, segmentation, detection, captioning), registry and presets."""
