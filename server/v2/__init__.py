"""The Open Inference Protocol (KServe V2 / Triton) over REST: wire format, tensor codec,
model metadata, and the mapping from V2 tensors onto the shared classification path."""
