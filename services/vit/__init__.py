"""The ViT service: image classification and embeddings for google/vit-base-patch16-224 and kin."""
