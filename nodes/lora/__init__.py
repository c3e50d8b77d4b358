"""LoRA and model merges as weight patches on MODEL / CLIP handles (files, patch + installer, nodes)."""
