"""Compile a spec: the standalone PyTorch model, the DeepSpeed config and the launch command."""
