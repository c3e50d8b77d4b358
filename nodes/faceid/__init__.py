"""FaceID IP-Adapters (face-ID embeddings, their projection models, their LoRA) and InsightFace."""
