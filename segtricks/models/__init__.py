"""The frozen ViT backbones (timm names, official weights) and the Sempart head on top of them."""
