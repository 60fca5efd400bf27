"""INT8 twins of a build folder's fp32 graphs: calibrate once on the first graph, quantise each.

The build folder (its file names, where the stage writes) is rmeeto_export.pipelines.folder's; this
module only turns fp32 graphs into INT8 ones with the calibration settings it is given.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional

from rmeeto_export.calibration.collect import calibrate
from rmeeto_export.calibration.qdq import quantize

if TYPE_CHECKING:
    from rmeeto_export.pipelines.settings import CalibrationSettings


def quantize_graphs(twins: dict[Path, Path], cache: Path, settings: "CalibrationSettings", force: bool = False,
                    log: Optional[Callable[[str], None]] = None) -> None:
    """Calibrate (or reuse `cache` made with the same settings and weights), then write `twins[graph]` for each graph.

    log: where calibration's progress lines go (none without it).
    """
    graphs = list(twins)
    # One calibration serves every graph: the twins share the quantised tensors and weights.
    calibrate(graphs[0], cache, settings.data, settings.num, settings.method, percentile=settings.percentile,
              smoothing_alpha=settings.alpha, force=force, log=log)
    for graph, twin in twins.items():
        quantize(graph, cache, twin, quantize_merge_inputs=settings.quantize_merge_inputs)
