"""phi3patch: activation and attribution patching on Phi-3, Qwen2/2.5, Qwen3, Llama 3.x,
Mistral, Gemma 2 and 3, GPT-2, Mixtral, Qwen3-MoE and OLMoE checkpoints, with the C++/CUDA
engine in-process.

    import phi3patch
    m = phi3patch.load("microsoft/Phi-3-mini-4k-instruct")   # a hub id (HF cache), a directory, or None: the embedded model
    r = m.patch(pairs, hooks=["resid_pre", "attn_out"], methods=["attribution", "activation"])
    r.frame("resid_pre", "attribution")               # a pandas DataFrame, layers x positions

The model is loaded once and reused by every call. Results equal the command line's
(`phi3patch run`) for the same options; `r.save(dir)` writes exactly its files.
"""
from ._core import Error, OutOfMemoryError
from ._model import Model, load, embedded_model_dir, seed_pairs_file
from ._result import PatchResult
from ._circuit import CircuitResult
from . import patching_algorithms
from .patching_algorithms import ActivationPatching, AttributionPatching

__all__ = [
    "load",
    "Model",
    "PatchResult",
    "CircuitResult",
    "AttributionPatching",
    "ActivationPatching",
    "patching_algorithms",
    "Error",
    "OutOfMemoryError",
    "embedded_model_dir",
    "seed_pairs_file",
]
__version__ = "0.1.0"
