"""Loaded by pytest for every test path, the chapters' nbval runs included.

Before any test runs a torch operation, and inherited by every notebook kernel nbval
starts: the CPU kernels the committed outputs were computed with (llmbook.device).
"""

from llmbook.device import use_reference_cpu_kernels

use_reference_cpu_kernels()
