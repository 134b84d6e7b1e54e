"""The GPU harness's parts (entry point: bench/gpu_harness.py): the run's state and its two measurements
(harness.py), one module per section, the layer classes the dtype figures run on (casting.py), the summary, and
the JSON report. Importing this package registers the pack, so that the engine is pixart_sigma_nodes.pixart."""
from bench.fixtures.pack import import_pack

import_pack()
