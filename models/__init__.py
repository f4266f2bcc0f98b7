"""Model definitions (Qwen3-VL), weight loading and input processing."""
