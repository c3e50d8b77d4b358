"""Model file formats every family reads: single-file SD1.5/SDXL checkpoints (reader and writer), the real
models' fixed configs, and the CLIP tokenizer with its shipped vocabulary.

Pure library code (torch, diffusers, transformers, safetensors); it imports nothing from ``ipgraph.engine``.
"""
