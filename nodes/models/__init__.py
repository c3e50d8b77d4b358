"""Model library: CLIP tokenizer, tiny random-weight models, single-file checkpoint reader/writer.

Pure library code (torch, diffusers, transformers, safetensors); it imports nothing from ``engine``.
"""
