"""The platform's models as a Triton Inference Server model repository, and a local tritonserver to serve it."""
