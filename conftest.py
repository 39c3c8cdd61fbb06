"""pytest set-up shared by every test file.

Triton kernels run on CPU tensors only through the interpreter, and TRITON_INTERPRET must be set
before the module that defines the kernels is imported, so it is set here, at collection time.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
