"""Score-first test-time training: per-document LoRA, phased global SGD, peer ensemble."""
