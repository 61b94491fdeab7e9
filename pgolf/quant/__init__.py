"""Quantization math (GPTQ, LQER, AWQ-lite), codecs and the artifact format."""
