"""Input tensors for tritonclient requests (either of its HTTP and gRPC modules)."""

import numpy as np


def prompts(module, texts: list[bytes], name: str = "prompt", datatype: str = "BYTES"):
    """A BYTES [B] input of ``texts``."""
    tensor = module.InferInput(name, [len(texts)], datatype)
    tensor.set_data_from_numpy(np.array(texts, dtype=np.object_))
    return tensor


def numbers(module, name: str, values, datatype: str, dtype):
    """A numeric [B] input."""
    tensor = module.InferInput(name, [len(values)], datatype)
    tensor.set_data_from_numpy(np.array(values, dtype=dtype))
    return tensor
